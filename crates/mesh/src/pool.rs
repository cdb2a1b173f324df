//! Reused packet buffers. Every packet used to cost a fresh zeroed
//! allocation each way (the stack's output, WireGuard's output, the
//! decrypted packet); buffers now go back to a per-thread free list once a
//! packet is sent or consumed, and the next packet takes one from there.
//! Plain memory: the sans-IO core uses it as the shell does.

use std::cell::RefCell;

/// Buffers kept per thread at most (about 3 MiB of 1.5 KiB buffers); the
/// rest are freed.
const KEEP: usize = 2048;
/// Capacity of a fresh buffer: any packet of the mesh MTU plus
/// WireGuard's overhead fits, so a reused buffer never grows.
const CAPACITY: usize = 1536;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `len` bytes, reused when one is free.
pub fn take(len: usize) -> Vec<u8> {
    let mut b = FREE
        .with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY.max(len)));
    b.clear();
    b.resize(len, 0);
    b
}

/// Gives a buffer back for reuse.
pub fn give(mut b: Vec<u8>) {
    // Buffers far larger than a packet (a TUN read of a GSO train) are not kept.
    if b.capacity() == 0 || b.capacity() > 4 * CAPACITY {
        return;
    }
    b.clear();
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_come_back_zeroed_and_sized() {
        let mut a = take(100);
        a.iter_mut().for_each(|x| *x = 0xff);
        let cap = a.capacity();
        give(a);
        let b = take(60);
        assert_eq!(b.len(), 60);
        assert!(b.iter().all(|x| *x == 0));
        assert_eq!(b.capacity(), cap);
        let big = take(70_000);
        assert_eq!(big.len(), 70_000);
        give(big);
        give(Vec::new());
    }
}
