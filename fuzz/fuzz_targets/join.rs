//! Join strings (control URL + CA pin), as typed by users or passed in flags.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(j) = gatehouse_client::Join::parse(s)
    {
        // What parses must print back to something that parses the same.
        let again = gatehouse_client::Join::parse(&j.url()).expect("url() parses");
        assert_eq!((again.host, again.port), (j.host, j.port));
    }
});
