//! Map frames: how `MapResponse`s travel in the body of a `/machine/map`
//! reply. Each frame is a 4-byte little-endian length and that many bytes:
//! the JSON of one `MapResponse`, zstd-compressed when the request said
//! `Compress: "zstd"` (which Tailscale's clients always do).
//!
//! Tailscale's client puts no bound on a frame's length and decompresses
//! whatever it gets; [`FrameDecoder`] bounds both the frame and its
//! decompressed JSON ([`MAX_FRAME_LEN`] unless set), so a hostile or
//! broken server can not make it allocate without limit.

use crate::map::MapResponse;
use std::io::Read;

/// The default bound on a frame, compressed and decompressed: 64 MiB,
/// room for a full map of tens of thousands of peers.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// The zstd level of encoded frames: the fastest, as map frames are made
/// for every change to every node.
pub const ZSTD_LEVEL: i32 = 1;

/// How a map stream's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain JSON.
    None,
    /// zstd-compressed JSON.
    Zstd,
}

impl Compression {
    /// The framing a request's `Compress` field asks for: `zstd`, or plain
    /// JSON for anything else (as Tailscale's servers do).
    pub fn from_request(compress: &str) -> Self {
        if compress == "zstd" {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Why a frame could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over the decoder's bound.
    #[error("map frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// The decompressed JSON is over the decoder's bound.
    #[error("map frame decompresses to more than {max} bytes")]
    DecompressedTooLarge {
        /// The bound.
        max: usize,
    },
    /// zstd refused the frame (or could not start).
    #[error("map frame zstd: {0}")]
    Zstd(#[source] std::io::Error),
    /// The JSON is not a `MapResponse`.
    #[error("map frame is not a MapResponse: {0}")]
    Json(#[source] serde_json::Error),
    /// The message could not be written as JSON.
    #[error("encoding a MapResponse: {0}")]
    Encode(#[source] serde_json::Error),
    /// The encoded message does not fit a 32-bit length.
    #[error("map frame of {0} bytes does not fit a 32-bit length")]
    Oversize(usize),
    /// An earlier frame failed; the stream can not be resynchronised.
    #[error("the map stream failed earlier")]
    Failed,
}

/// Makes frames for one map stream (keeps the zstd context between them).
pub struct FrameEncoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("zstd", &self.compressor.is_some())
            .finish()
    }
}

impl FrameEncoder {
    /// An encoder for a stream with the given compression.
    pub fn new(compression: Compression) -> Result<Self, FrameError> {
        let compressor = match compression {
            Compression::None => None,
            Compression::Zstd => {
                let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(FrameError::Zstd)?;
                c.include_checksum(true).map_err(FrameError::Zstd)?;
                c.include_contentsize(true).map_err(FrameError::Zstd)?;
                Some(c)
            }
        };
        Ok(FrameEncoder { compressor })
    }

    /// The frame of one message.
    pub fn encode(&mut self, msg: &MapResponse) -> Result<Vec<u8>, FrameError> {
        if self.compressor.is_none() {
            // Plain: the JSON is written after room for its length.
            let mut out = vec![0u8; 4];
            serde_json::to_writer(&mut out, msg).map_err(FrameError::Encode)?;
            let Ok(len) = u32::try_from(out.len() - 4) else {
                return Err(FrameError::Oversize(out.len() - 4));
            };
            out[..4].copy_from_slice(&len.to_le_bytes());
            return Ok(out);
        }
        let json = serde_json::to_vec(msg).map_err(FrameError::Encode)?;
        self.encode_json(&json)
    }

    /// The frame of a message already written as JSON.
    pub fn encode_json(&mut self, json: &[u8]) -> Result<Vec<u8>, FrameError> {
        let body = match &mut self.compressor {
            Some(c) => c.compress(json).map_err(FrameError::Zstd)?,
            None => json.to_vec(),
        };
        let Ok(len) = u32::try_from(body.len()) else {
            return Err(FrameError::Oversize(body.len()));
        };
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// The frame of one message (a one-off [`FrameEncoder`]).
pub fn encode_frame(msg: &MapResponse, compression: Compression) -> Result<Vec<u8>, FrameError> {
    FrameEncoder::new(compression)?.encode(msg)
}

/// Reads frames from the bytes of a map reply as they arrive (sans I/O:
/// [`push`](Self::push) what was read, then take frames until `None`).
#[derive(Debug)]
pub struct FrameDecoder {
    compression: Compression,
    max_len: usize,
    buf: Vec<u8>,
    start: usize,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder for a stream with the given compression, bounded by
    /// [`MAX_FRAME_LEN`].
    pub fn new(compression: Compression) -> Self {
        FrameDecoder {
            compression,
            max_len: MAX_FRAME_LEN,
            buf: Vec::new(),
            start: 0,
            failed: false,
        }
    }

    /// Sets the bound on a frame and on its decompressed JSON.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The JSON of the next complete frame, decompressed; `None` until one
    /// has arrived. After an error every call fails.
    pub fn next_json(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.failed {
            return Err(FrameError::Failed);
        }
        let r = self.take();
        if r.is_err() {
            self.failed = true;
            self.buf = Vec::new();
            self.start = 0;
        }
        r
    }

    /// The next complete frame as a `MapResponse`.
    pub fn next_response(&mut self) -> Result<Option<MapResponse>, FrameError> {
        match self.next_json()? {
            None => Ok(None),
            Some(json) => match crate::wire::from_json(&json) {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    self.failed = true;
                    Err(FrameError::Json(e))
                }
            },
        }
    }

    fn take(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let avail = &self.buf[self.start..];
        let Some(header) = avail.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*header);
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > self.max_len {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_len,
            });
        }
        let Some(body) = avail.get(4..4 + len_usize) else {
            return Ok(None);
        };
        let json = match self.compression {
            Compression::None => body.to_vec(),
            Compression::Zstd => decompress(body, self.max_len)?,
        };
        self.start += 4 + len_usize;
        Ok(Some(json))
    }
}

/// Decompresses one or more zstd frames into at most `max` bytes.
pub fn decompress(data: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let mut dec = zstd::stream::read::Decoder::with_buffer(data).map_err(FrameError::Zstd)?;
    // A frame declares its window (for a single-segment frame, its whole
    // size); refuse windows larger than the bound before allocating them.
    let window_log = usize::BITS - max.max(1024).saturating_sub(1).leading_zeros();
    dec.window_log_max(window_log.min(31))
        .map_err(FrameError::Zstd)?;
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    dec.take(limit)
        .read_to_end(&mut out)
        .map_err(FrameError::Zstd)?;
    if out.len() > max {
        return Err(FrameError::DecompressedTooLarge { max });
    }
    Ok(out)
}

/// Reads every complete frame of `data` as `MapResponse`s; the bytes of an
/// incomplete last frame are left out (for tests and one-shot replies).
pub fn decode_frames(
    data: &[u8],
    compression: Compression,
) -> Result<Vec<MapResponse>, FrameError> {
    let mut d = FrameDecoder::new(compression);
    d.push(data);
    let mut out = Vec::new();
    while let Some(m) = d.next_response()? {
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_the_bytes_the_client_expects() {
        let f = encode_frame(&MapResponse::keep_alive(), Compression::None).unwrap();
        assert_eq!(&f[..4], &18u32.to_le_bytes());
        assert_eq!(&f[4..], br#"{"KeepAlive":true}"#);
        let z = encode_frame(&MapResponse::keep_alive(), Compression::Zstd).unwrap();
        // zstd magic after the length.
        assert_eq!(&z[4..8], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(
            u32::from_le_bytes(z[..4].try_into().unwrap()) as usize,
            z.len() - 4
        );
        let back = decode_frames(&z, Compression::Zstd).unwrap();
        assert_eq!(back, vec![MapResponse::keep_alive()]);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut enc = FrameEncoder::new(Compression::Zstd).unwrap();
        let a = MapResponse {
            domain: "example.com".into(),
            collect_services: Some(false),
            ..MapResponse::default()
        };
        let b = MapResponse::keep_alive();
        let mut bytes = enc.encode(&a).unwrap();
        bytes.extend(enc.encode(&b).unwrap());
        for split in 0..=bytes.len() {
            let mut d = FrameDecoder::new(Compression::Zstd);
            let mut got = Vec::new();
            d.push(&bytes[..split]);
            while let Some(m) = d.next_response().unwrap() {
                got.push(m);
            }
            d.push(&bytes[split..]);
            while let Some(m) = d.next_response().unwrap() {
                got.push(m);
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "split at {split}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversized_and_corrupt_frames_fail_and_stay_failed() {
        let mut d = FrameDecoder::new(Compression::None).with_max_len(100);
        d.push(&101u32.to_le_bytes());
        assert!(matches!(
            d.next_json(),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
        d.push(b"{}");
        assert!(matches!(d.next_json(), Err(FrameError::Failed)));

        // A compressed frame whose JSON is over the bound.
        let big = vec![b' '; 5000];
        let mut enc = FrameEncoder::new(Compression::Zstd).unwrap();
        let frame = enc.encode_json(&big).unwrap();
        assert!(frame.len() < 100);
        let mut d = FrameDecoder::new(Compression::Zstd).with_max_len(4096);
        d.push(&frame);
        let e = d.next_json().unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::DecompressedTooLarge { max: 4096 } | FrameError::Zstd(_)
            ),
            "{e}"
        );

        let mut d = FrameDecoder::new(Compression::Zstd);
        d.push(&[4, 0, 0, 0, 1, 2, 3, 4]);
        assert!(matches!(d.next_json(), Err(FrameError::Zstd(_))));

        let mut d = FrameDecoder::new(Compression::None);
        d.push(&[2, 0, 0, 0, b'{', b'x']);
        assert!(matches!(d.next_response(), Err(FrameError::Json(_))));
        assert!(matches!(d.next_response(), Err(FrameError::Failed)));
    }
}
