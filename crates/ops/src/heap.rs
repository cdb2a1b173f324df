//! Heap settings for the processes that relay bulk data (edge, connector,
//! relay).
//!
//! Relaying a large body allocates and frees buffers of a few hundred KiB
//! over and over: hyper's read buffer for each read from a socket, freed
//! once QUIC has the bytes acknowledged. glibc gives the free space at the
//! top of a thread's heap back to the kernel as soon as it exceeds the
//! trim threshold (128 KiB at first), so each new buffer is faulted in and
//! zeroed page by page again: about an eighth of the edge's and the
//! connector's CPU during a download.
//!
//! glibc raises its thresholds by itself once a block allocated with
//! `mmap` is freed: the mmap threshold becomes that block's size and the
//! trim threshold twice that (`mallopt(3)`, "dynamic mmap threshold").
//! [`keep_freed_buffers`] frees one such block when the first request is
//! relayed, so the thresholds start where a bulk transfer would otherwise
//! push them only after many trims, without `unsafe` code or environment
//! variables. Not at start-up: what start-up frees is still trimmed, so an
//! idle process stays as small as before. After load, a process keeps at
//! most [`RETAINED`] × 2 of free heap per thread for reuse.

/// Size of the block freed on the first relayed request: buffers up to
/// this size come from the heap, and up to twice this much free space stays
/// at the top of each heap.
pub const RETAINED: usize = 2 << 20;

/// Raises glibc's mmap and trim thresholds to [`RETAINED`] and twice that
/// (see the module documentation), the first time it is called; later
/// calls cost one atomic load. Elsewhere than glibc it only allocates and
/// frees one block.
pub fn keep_freed_buffers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let block: Vec<u8> = Vec::with_capacity(RETAINED);
        // The allocation must happen (and be freed) for glibc to see it.
        drop(std::hint::black_box(block));
    });
}
