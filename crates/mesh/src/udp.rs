//! The one UDP socket: batched receive (recvmmsg, GRO) and send (GSO) through
//! quinn-udp, where the platform has them.

use crate::core::Transmit;
use crate::path::Path;
use quinn_udp::{RecvMeta, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams received per call.
pub const RX_BATCH: usize = 32;
/// Size of each receive buffer (room for a GRO train).
const RX_BUF: usize = 64 * 1024;

/// A UDP socket with batched I/O.
#[derive(Debug)]
pub struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    gso: usize,
    /// Where a GSO batch is assembled (kept: 64 KiB per send is not free).
    batch: Vec<u8>,
}

impl Udp {
    /// Binds.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        // Larger kernel buffers absorb bursts between polls; best effort.
        let _ = state.set_recv_buffer_size((&std).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&std).into(), 4 << 20);
        let socket = UdpSocket::from_std(std)?;
        let gso = state.max_gso_segments().max(1);
        Ok(Udp {
            socket,
            state,
            bufs: (0..RX_BATCH).map(|_| vec![0u8; RX_BUF]).collect(),
            metas: vec![RecvMeta::default(); RX_BATCH],
            gso,
            batch: Vec::with_capacity(64 * 1024),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits until a receive would not block.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receives what is queued, without waiting; calls `f` per datagram.
    /// Returns the number of datagrams (0 when nothing was queued).
    pub fn try_recv(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let Udp {
            socket,
            state,
            bufs,
            metas,
            ..
        } = self;
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match socket.try_io(Interest::READABLE, || {
            state.recv((&*socket).into(), &mut slices, metas)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut count = 0;
        for (meta, buf) in metas.iter().zip(slices.iter()).take(n) {
            let stride = meta.stride.max(1);
            let data = buf.get(..meta.len).unwrap_or(&[]);
            for d in data.chunks(stride) {
                f(meta.addr, d);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sends datagrams, grouping runs to one destination into GSO batches.
    /// Datagrams that cannot be sent now are dropped (as a network would).
    /// `transmits` is left as it was, for the caller to reuse its buffers.
    pub async fn send_all(&mut self, transmits: &[Transmit]) {
        let mut i = 0;
        let mut batch = std::mem::take(&mut self.batch);
        while i < transmits.len() {
            // Relayed datagrams are the shell's to hand to the node.
            let Path::Direct(dst) = transmits[i].path else {
                i += 1;
                continue;
            };
            let seg = transmits[i].payload.len();
            batch.clear();
            batch.extend_from_slice(&transmits[i].payload);
            let mut j = i + 1;
            // Equal-size datagrams to one destination; the last may be shorter.
            while j < transmits.len()
                && j - i < self.gso
                && transmits[j].path == transmits[i].path
                && transmits[j].payload.len() <= seg
                && batch.len() + seg <= 64_000
            {
                batch.extend_from_slice(&transmits[j].payload);
                j += 1;
                if transmits[j - 1].payload.len() < seg {
                    break;
                }
            }
            let t = quinn_udp::Transmit {
                destination: dst,
                ecn: None,
                contents: &batch,
                segment_size: (j - i > 1).then_some(seg),
                src_ip: None,
            };
            loop {
                match self.socket.try_io(Interest::WRITABLE, || {
                    self.state.try_send((&self.socket).into(), &t)
                }) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.socket.writable().await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "udp send failed");
                        break;
                    }
                }
            }
            i = j;
        }
        self.batch = batch;
    }
}
