//! Records, sans-IO: after the handshake every byte travels in records of
//! type 4, each sealed with ChaCha20-Poly1305 under its direction's key.
//!
//! ```text
//! 1  type 4
//! 2  ciphertext length, big-endian (at most 4,093: a record is at most 4,096 bytes)
//! …  ciphertext: plaintext (at most 4,077 bytes) then the 16-byte tag
//! ```
//!
//! The nonce is 4 zero bytes then a 64-bit counter, **big-endian** (the
//! Noise specification says little-endian; Tailscale's code, and so the
//! wire, uses big-endian). A counter that would reach 2^64 - 1 ends the
//! direction; there is no rekeying. Any bad record ends its direction: the
//! two ends' counters are no longer in step.

use crate::error::RecordError;
use crate::handshake::{HEADER_LEN, TYPE_RECORD};
use bytes::{Buf, BufMut, BytesMut};
use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use std::fmt;

/// The largest record on the wire, header included.
pub const MAX_RECORD_LEN: usize = 4096;
/// The most ciphertext one record carries.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_RECORD_LEN - HEADER_LEN;
/// The most plaintext one record carries.
pub const MAX_PLAINTEXT_LEN: usize = MAX_CIPHERTEXT_LEN - TAG_LEN;
const TAG_LEN: usize = 16;

/// One direction's cipher and nonce counter.
struct CipherState {
    aead: ChaCha20Poly1305,
    counter: u64,
    dead: bool,
}

impl CipherState {
    fn new(key: [u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(&key.into()),
            counter: 0,
            dead: false,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.dead {
            return Err(RecordError::Dead);
        }
        if self.counter == u64::MAX {
            self.dead = true;
            return Err(RecordError::NonceExhausted);
        }
        let n = nonce(self.counter);
        self.counter += 1;
        Ok(n)
    }

    fn fail(&mut self, e: RecordError) -> RecordError {
        self.dead = true;
        e
    }
}

/// The nonce of record number `counter`.
fn nonce(counter: u64) -> Nonce {
    let mut n = Nonce::default();
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// A session's two record ciphers, from a finished handshake.
pub struct Transport {
    send: CipherState,
    recv: CipherState,
    handshake_hash: [u8; 32],
}

impl Transport {
    pub(crate) fn new(send: [u8; 32], recv: [u8; 32], handshake_hash: [u8; 32]) -> Self {
        Self {
            send: CipherState::new(send),
            recv: CipherState::new(recv),
            handshake_hash,
        }
    }

    /// The Noise handshake hash: the same at both ends, unique to the
    /// session, so a message can be bound to it.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// Seals `plaintext` as records of at most [`MAX_PLAINTEXT_LEN`]
    /// bytes each, appended to `out`. Nothing is written for an empty
    /// plaintext.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), RecordError> {
        for chunk in plaintext.chunks(MAX_PLAINTEXT_LEN) {
            self.seal_record(chunk, out)?;
        }
        Ok(())
    }

    /// Seals exactly one record (possibly empty) appended to `out`.
    pub fn seal_record(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), RecordError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(RecordError::TooLarge {
                len: HEADER_LEN + plaintext.len() + TAG_LEN,
            });
        }
        let nonce = self.send.next_nonce()?;
        out.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.put_u8(TYPE_RECORD);
        out.put_u16((plaintext.len() + TAG_LEN) as u16);
        let start = out.len();
        out.extend_from_slice(plaintext);
        match self
            .send
            .aead
            .encrypt_in_place_detached(&nonce, &[], &mut out[start..])
        {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                out.truncate(start - HEADER_LEN);
                Err(self.send.fail(RecordError::Seal(e)))
            }
        }
    }

    /// Takes one whole record off the front of `buf` and returns its
    /// plaintext (possibly empty); `None` while `buf` holds less than a
    /// record. A bad header is refused as soon as its 3 bytes are in.
    pub fn open(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, RecordError> {
        if self.recv.dead {
            return Err(RecordError::Dead);
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if buf[0] != TYPE_RECORD {
            return Err(self.recv.fail(RecordError::Type { got: buf[0] }));
        }
        let len = HEADER_LEN + usize::from(u16::from_be_bytes([buf[1], buf[2]]));
        if len > MAX_RECORD_LEN {
            return Err(self.recv.fail(RecordError::TooLarge { len }));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let mut record = buf.split_to(len);
        record.advance(HEADER_LEN);
        if record.len() < TAG_LEN {
            return Err(self
                .recv
                .fail(RecordError::Decrypt(chacha20poly1305::Error)));
        }
        let nonce = self.recv.next_nonce()?;
        let mut tag = Tag::default();
        tag.copy_from_slice(&record[record.len() - TAG_LEN..]);
        record.truncate(record.len() - TAG_LEN);
        match self
            .recv
            .aead
            .decrypt_in_place_detached(&nonce, &[], &mut record, &tag)
        {
            Ok(()) => Ok(Some(record)),
            Err(e) => Err(self.recv.fail(RecordError::Decrypt(e))),
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("sent", &self.send.counter)
            .field("received", &self.recv.counter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chacha20poly1305::aead::Aead;

    fn pair() -> (Transport, Transport) {
        let (a, b, h) = ([1; 32], [2; 32], [3; 32]);
        (Transport::new(a, b, h), Transport::new(b, a, h))
    }

    #[test]
    fn nonce_counter_is_big_endian() {
        let (mut tx, _) = pair();
        let mut out = BytesMut::new();
        tx.seal_record(b"first", &mut out).unwrap();
        out.clear();
        tx.seal_record(b"second", &mut out).unwrap();
        let aead = ChaCha20Poly1305::new(&[1u8; 32].into());
        let ct = &out[HEADER_LEN..];
        let be = Nonce::from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let le = Nonce::from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(aead.decrypt(&be, ct).unwrap(), b"second");
        assert!(aead.decrypt(&le, ct).is_err());
    }

    #[test]
    fn the_last_nonce_is_never_used() {
        let (mut tx, mut rx) = pair();
        tx.send.counter = u64::MAX - 1;
        rx.recv.counter = u64::MAX - 1;
        let mut out = BytesMut::new();
        tx.seal_record(b"last", &mut out).unwrap();
        assert_eq!(&rx.open(&mut out).unwrap().unwrap()[..], b"last");
        assert!(matches!(
            tx.seal_record(b"one more", &mut out),
            Err(RecordError::NonceExhausted)
        ));
        assert!(out.is_empty(), "nothing written for a refused record");
        assert!(matches!(tx.seal(b"x", &mut out), Err(RecordError::Dead)));
    }

    #[test]
    fn receive_side_stays_dead_after_an_error() {
        let (mut tx, mut rx) = pair();
        let mut good = BytesMut::new();
        tx.seal(b"one", &mut good).unwrap();
        tx.seal(b"two", &mut good).unwrap();
        let mut first = good.split_to(good.len() / 2);
        first[5] ^= 1;
        assert!(matches!(rx.open(&mut first), Err(RecordError::Decrypt(_))));
        assert!(matches!(rx.open(&mut good), Err(RecordError::Dead)));
    }
}
