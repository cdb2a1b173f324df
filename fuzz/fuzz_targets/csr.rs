//! Certificate signing requests as control receives them from joining and
//! renewing nodes: refused or signed, never a panic.
#![no_main]

use gatehouse_control::ca::MeshCa;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn ca() -> &'static MeshCa {
    static CA: OnceLock<(tempfile::TempDir, MeshCa)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = MeshCa::load_or_create(dir.path(), "fuzz.internal", &[]).expect("CA");
        (dir, ca)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(pem) = std::str::from_utf8(data) {
        let _ = ca().sign_serving(pem, &["node.fuzz.internal".to_string()], time::Duration::hours(1));
        let _ = ca().sign_machine(pem, "n1", time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    }
});
