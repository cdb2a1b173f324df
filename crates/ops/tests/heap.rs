//! `heap::keep_freed_buffers` in a process of its own (the thresholds it
//! raises are process-wide): buffers freed and allocated again, as a bulk
//! relay does, reuse heap pages instead of faulting new ones in.

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Allocates eight 256 KiB buffers, writes to every page, frees them all;
/// `rounds` times. Returns the page faults it took.
fn churn(rounds: usize) -> u64 {
    let before = minor_faults();
    for _ in 0..rounds {
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| Vec::with_capacity(256 << 10)).collect();
        for b in &mut bufs {
            b.resize(256 << 10, 1);
        }
        std::hint::black_box(&bufs);
    }
    minor_faults() - before
}

#[test]
fn freed_buffers_are_reused_without_faulting_pages_again() {
    // On a thread of its own, so the buffers come from a thread heap as in
    // a tokio worker.
    std::thread::spawn(|| {
        gatehouse_ops::heap::keep_freed_buffers();
        // One round brings the pages in; later rounds should fault almost
        // none (a trimmed heap faults ~512 per round).
        churn(1);
        let faults = churn(32);
        assert!(faults < 32 * 64, "{faults} page faults in 32 rounds");
    })
    .join()
    .unwrap();
}
