//! User-space TCP/IP: smoltcp interfaces owning the node's mesh addresses,
//! sharded so that no interface holds many sockets (smoltcp visits every
//! socket of an interface for each packet and each poll).
//!
//! A connection lives in the shard its 4-tuple hashes to; inbound segments
//! go to the same shard, so a packet only meets the sockets of one shard.
//! Inbound connections are accepted on any port: a SYN the filter let
//! through gets a listening socket of its own, made just before the shard
//! sees the SYN. Connections are handed out as [`MeshStream`]s, which read
//! and write the socket buffers directly under the shard's lock and wake the
//! driver when the shard has something to send.

use crate::packet::{self, proto};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// MTU of the mesh interface (IP packets inside WireGuard). 1280 is the
/// IPv6 minimum: with WireGuard, UDP and an IPv6 header it fits a 1360-byte
/// path, so no path between nodes needs fragmentation.
pub const MTU: usize = 1280;
/// Number of smoltcp interfaces in user-space mode.
pub const SHARDS: usize = 256;
/// Receive and send buffer of each TCP socket. Allocated zeroed, so pages an
/// idle connection never touches cost address space only. 512 KiB keeps a
/// flow to or from a peer whose stack acknowledges later (a `tailscaled`)
/// from waiting on the window; 256 KiB held those flows below the
/// `tailscaled` pair (docs/benchmarks.md, "TCP buffers of 512 KiB").
pub const TCP_BUFFER: usize = 512 * 1024;
/// A connection whose peer acknowledges nothing for this long, while data
/// waits to be sent, is reset (idle connections are not).
pub const TCP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`crate::Mesh::connect`] waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Packets in and out of one smoltcp interface.
#[derive(Debug, Default)]
pub(crate) struct QueueDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
}

pub(crate) struct QueueRx(Vec<u8>);
pub(crate) struct QueueTx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for QueueRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        crate::pool::give(self.0);
        r
    }
}

impl TxToken for QueueTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = crate::pool::take(len);
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QueueRx;
    type TxToken<'a> = QueueTx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(QueueRx, QueueTx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((QueueRx(p), QueueTx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<QueueTx<'_>> {
        Some(QueueTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // WireGuard authenticates every packet: checksums are computed for
        // peers that check them (kernels) but not verified here.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps.checksum.icmpv6 = Checksum::Tx;
        caps
    }
}

/// One connection's endpoints, as the shard keys it.
type Tuple = (SocketAddr, SocketAddr);

/// One smoltcp interface and its sockets.
pub(crate) struct Shard {
    iface: Interface,
    sockets: SocketSet<'static>,
    pub(crate) device: QueueDevice,
    conns: HashMap<Tuple, SocketHandle>,
    /// Sockets made for an inbound SYN, not yet handed out.
    pending: Vec<(SocketHandle, Tuple)>,
    /// Sockets whose stream was dropped: removed once closed.
    detached: Vec<(SocketHandle, Tuple)>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn smol_now(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let us = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

impl Shard {
    fn new(addresses: &[IpAddr], epoch: Instant) -> Self {
        let mut device = QueueDevice::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut device,
            smol_now(epoch, epoch),
        );
        iface.update_ip_addrs(|a| {
            for ip in addresses {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                // At most a few addresses; the capacity holds them.
                let _ = a.push(IpCidr::new(IpAddress::from(*ip), len));
            }
        });
        // Every peer is reached "through" this interface: default routes via
        // our own address (the gateway of a point-to-point IP medium is moot).
        for ip in addresses {
            let _ = match ip {
                IpAddr::V4(a) => iface.routes_mut().add_default_ipv4_route(*a).map(|_| ()),
                IpAddr::V6(a) => iface.routes_mut().add_default_ipv6_route(*a).map(|_| ()),
            };
        }
        Shard {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            conns: HashMap::new(),
            pending: Vec::new(),
            detached: Vec::new(),
        }
    }

    fn new_socket() -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]);
        let tx = tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_timeout(Some(smoltcp::time::Duration::from_millis(
            TCP_TIMEOUT.as_millis() as u64,
        )));
        s.set_nagle_enabled(false);
        s
    }

    /// Number of sockets.
    pub(crate) fn len(&self) -> usize {
        self.sockets.iter().count()
    }

    /// Prepares for an inbound TCP segment: a SYN for a new 4-tuple gets a
    /// listening socket. Returns false if the segment should be dropped.
    fn prepare_inbound(&mut self, local: SocketAddr, remote: SocketAddr, syn: bool) -> bool {
        if self.conns.contains_key(&(local, remote)) || !syn {
            return true;
        }
        let mut s = Self::new_socket();
        if s.listen(IpListenEndpoint {
            addr: Some(local.ip().into()),
            port: local.port(),
        })
        .is_err()
        {
            return false;
        }
        let h = self.sockets.add(s);
        self.conns.insert((local, remote), h);
        self.pending.push((h, (local, remote)));
        true
    }

    /// Runs the interface; returns the packets it wants sent.
    pub(crate) fn poll(&mut self, now: smoltcp::time::Instant) -> Vec<Vec<u8>> {
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        std::mem::take(&mut self.device.tx)
    }

    /// When the interface wants to be polled again.
    pub(crate) fn poll_at(
        &mut self,
        now: smoltcp::time::Instant,
    ) -> Option<smoltcp::time::Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    /// Established inbound connections to hand out; forgets closed ones.
    fn sweep(&mut self) -> Vec<(SocketHandle, Tuple)> {
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        for (h, t) in std::mem::take(&mut self.pending) {
            match self.sockets.get::<tcp::Socket>(h).state() {
                tcp::State::SynReceived => keep.push((h, t)),
                tcp::State::Listen | tcp::State::Closed | tcp::State::TimeWait => {
                    self.sockets.remove(h);
                    self.conns.remove(&t);
                }
                _ => ready.push((h, t)),
            }
        }
        self.pending = keep;
        let mut still = Vec::new();
        for (h, t) in std::mem::take(&mut self.detached) {
            match self.sockets.get::<tcp::Socket>(h).state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    self.sockets.remove(h);
                    self.conns.remove(&t);
                }
                _ => still.push((h, t)),
            }
        }
        self.detached = still;
        ready
    }
}

/// Which shard a connection lives in.
fn shard_of(local: SocketAddr, remote: SocketAddr, n: usize) -> usize {
    // FNV-1a over the tuple: cheap and deterministic.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for a in [local, remote] {
        match a.ip() {
            IpAddr::V4(ip) => mix(&ip.octets()),
            IpAddr::V6(ip) => mix(&ip.octets()),
        }
        mix(&a.port().to_be_bytes());
    }
    (h % n.max(1) as u64) as usize
}

/// Shared between the driver and the streams: which shards need a poll.
#[derive(Debug)]
pub(crate) struct Wake {
    pub dirty: Vec<AtomicBool>,
    pub notify: Notify,
}

impl Wake {
    pub(crate) fn mark(&self, shard: usize) {
        if let Some(d) = self.dirty.get(shard) {
            d.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }
}

/// All shards.
#[derive(Debug)]
pub(crate) struct Stack {
    pub shards: Vec<Arc<Mutex<Shard>>>,
    pub wake: Arc<Wake>,
    pub epoch: Instant,
    addresses: Vec<IpAddr>,
    next_port: Mutex<u16>,
}

/// A new inbound connection, not yet a stream.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub shard: usize,
    pub handle: SocketHandle,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Locks a shard; a poisoned lock (a panic elsewhere) is taken over: the
/// shard's state is plain data, consistent between calls.
pub(crate) fn lock(s: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stack {
    pub(crate) fn new(addresses: &[IpAddr], shards: usize, epoch: Instant) -> Self {
        let n = shards.max(1);
        Stack {
            shards: (0..n)
                .map(|_| Arc::new(Mutex::new(Shard::new(addresses, epoch))))
                .collect(),
            wake: Arc::new(Wake {
                dirty: (0..n).map(|_| AtomicBool::new(false)).collect(),
                notify: Notify::new(),
            }),
            epoch,
            addresses: addresses.to_vec(),
            next_port: Mutex::new(49152 + (rand::random::<u16>() % 16384)),
        }
    }

    pub(crate) fn now(&self, now: Instant) -> smoltcp::time::Instant {
        smol_now(self.epoch, now)
    }

    /// Hands an inbound IP packet (already filtered) to its shard.
    pub(crate) fn inbound(&self, p: Vec<u8>) {
        let Ok(info) = packet::parse(&p) else {
            return;
        };
        let shard = if info.proto == proto::TCP {
            let local = SocketAddr::new(info.dst, info.dst_port);
            let remote = SocketAddr::new(info.src, info.src_port);
            let i = shard_of(local, remote, self.shards.len());
            let mut s = lock(&self.shards[i]);
            if !s.prepare_inbound(local, remote, info.is_tcp_syn()) {
                return;
            }
            s.device.rx.push_back(p);
            i
        } else {
            // ICMP echo is answered by the first shard; other protocols
            // have no sockets in user-space mode.
            lock(&self.shards[0]).device.rx.push_back(p);
            0
        };
        if let Some(d) = self.wake.dirty.get(shard) {
            d.store(true, Ordering::Release);
        }
    }

    /// Polls one shard: returns packets to send and accepted connections.
    pub(crate) fn poll_shard(
        &self,
        i: usize,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
        accepted: &mut Vec<Accepted>,
    ) {
        let t = self.now(now);
        let mut s = lock(&self.shards[i]);
        out.extend(s.poll(t));
        for (handle, (local, remote)) in s.sweep() {
            accepted.push(Accepted {
                shard: i,
                handle,
                local,
                remote,
            });
        }
    }

    /// When one shard wants its next poll.
    pub(crate) fn shard_poll_at(&self, i: usize, now: Instant) -> Option<Instant> {
        let at = lock(self.shards.get(i)?).poll_at(self.now(now))?;
        Some(self.epoch + Duration::from_micros(u64::try_from(at.total_micros()).unwrap_or(0)))
    }

    /// Starts an outbound connection; the returned stream completes the
    /// handshake when first used through [`MeshStream::established`].
    pub(crate) fn connect(&self, dst: SocketAddr) -> io::Result<MeshStream> {
        let Some(local_ip) = self
            .addresses
            .iter()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
            .copied()
        else {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no mesh address of that family",
            ));
        };
        for _ in 0..64 {
            let port = {
                let mut p = self.next_port.lock().unwrap_or_else(|e| e.into_inner());
                *p = if *p == u16::MAX { 49152 } else { *p + 1 };
                *p
            };
            let local = SocketAddr::new(local_ip, port);
            let i = shard_of(local, dst, self.shards.len());
            let mut s = lock(&self.shards[i]);
            if s.conns.contains_key(&(local, dst)) {
                continue;
            }
            let mut sock = Shard::new_socket();
            let Shard {
                iface,
                sockets,
                conns,
                ..
            } = &mut *s;
            sock.connect(
                iface.context(),
                IpEndpoint::new(dst.ip().into(), dst.port()),
                local,
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("connect: {e}")))?;
            let handle = sockets.add(sock);
            conns.insert((local, dst), handle);
            drop(s);
            self.wake.mark(i);
            return Ok(MeshStream::new(
                Arc::clone(&self.shards[i]),
                Arc::clone(&self.wake),
                i,
                handle,
                local,
                dst,
            ));
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free local port",
        ))
    }

    /// Makes a stream of an accepted connection.
    pub(crate) fn stream(&self, a: &Accepted) -> MeshStream {
        MeshStream::new(
            Arc::clone(&self.shards[a.shard]),
            Arc::clone(&self.wake),
            a.shard,
            a.handle,
            a.local,
            a.remote,
        )
    }

    /// Resets every connection (the data plane is stopping): streams see
    /// the end, writes fail.
    pub(crate) fn abort_all(&self) {
        for shard in &self.shards {
            let mut s = lock(shard);
            for (_, sock) in s.sockets.iter_mut() {
                // Only TCP sockets are made here; other kinds exist when
                // another crate enables them in smoltcp.
                #[allow(irrefutable_let_patterns)]
                if let smoltcp::socket::Socket::Tcp(t) = sock {
                    t.abort();
                }
            }
        }
    }

    /// Total sockets over all shards.
    pub(crate) fn sockets(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// A TCP connection over the mesh: `AsyncRead + AsyncWrite`. Dropping it
/// closes the connection (FIN after the queued data).
pub struct MeshStream {
    shard: Arc<Mutex<Shard>>,
    wake: Arc<Wake>,
    index: usize,
    handle: SocketHandle,
    local: SocketAddr,
    remote: SocketAddr,
}

impl std::fmt::Debug for MeshStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStream")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl MeshStream {
    fn new(
        shard: Arc<Mutex<Shard>>,
        wake: Arc<Wake>,
        index: usize,
        handle: SocketHandle,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        MeshStream {
            shard,
            wake,
            index,
            handle,
            local,
            remote,
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Waits until the handshake completed (or failed).
    pub(crate) async fn established(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut s = lock(&self.shard);
            let sock = s.sockets.get_mut::<tcp::Socket>(self.handle);
            match sock.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    sock.register_send_waker(cx.waker());
                    sock.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed | tcp::State::Listen => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused or timed out",
                ))),
                _ => Poll::Ready(Ok(())),
            }
        })
        .await
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut s = lock(&this.shard);
        let sock = s.sockets.get_mut::<tcp::Socket>(this.handle);
        if sock.can_recv() {
            let n = match sock.recv_slice(buf.initialize_unfilled()) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(io::Error::other(e.to_string()))),
            };
            buf.advance(n);
            drop(s);
            this.wake.mark(this.index);
            return Poll::Ready(Ok(()));
        }
        if !sock.may_recv() {
            // The other end closed (or reset): end of stream.
            return Poll::Ready(Ok(()));
        }
        sock.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut s = lock(&this.shard);
        let sock = s.sockets.get_mut::<tcp::Socket>(this.handle);
        if !sock.may_send() {
            if matches!(sock.state(), tcp::State::SynSent | tcp::State::SynReceived) {
                sock.register_send_waker(cx.waker());
                return Poll::Pending;
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            )));
        }
        if sock.can_send() {
            let n = match sock.send_slice(data) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(io::Error::other(e.to_string()))),
            };
            drop(s);
            this.wake.mark(this.index);
            return Poll::Ready(Ok(n));
        }
        sock.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        lock(&this.shard)
            .sockets
            .get_mut::<tcp::Socket>(this.handle)
            .close();
        this.wake.mark(this.index);
        Poll::Ready(Ok(()))
    }
}

impl Drop for MeshStream {
    fn drop(&mut self) {
        let mut s = lock(&self.shard);
        let sock = s.sockets.get_mut::<tcp::Socket>(self.handle);
        if sock.recv_queue() > 0 {
            // Unread data: the peer cannot know what was consumed; reset.
            sock.abort();
        } else {
            sock.close();
        }
        s.detached.push((self.handle, (self.local, self.remote)));
        drop(s);
        self.wake.mark(self.index);
    }
}

/// Makes a stack and runs it in memory: for the benchmark of sharding.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Two stacks wired back to back in memory, with `idle` idle connections
    /// spread over `shards` shards on each side, moving `bytes` over one
    /// more connection. Returns the time the transfer took.
    pub fn transfer(shards: usize, idle: usize, bytes: usize) -> Duration {
        let a_ip: IpAddr = IpAddr::from([100, 64, 0, 1]);
        let b_ip: IpAddr = IpAddr::from([100, 64, 0, 2]);
        let epoch = Instant::now();
        let a = Stack::new(&[a_ip], shards, epoch);
        let b = Stack::new(&[b_ip], shards, epoch);
        let mut streams = Vec::new();
        let mut accepted = Vec::new();
        let mut out = Vec::new();
        let pump = |a: &Stack, b: &Stack, out: &mut Vec<Vec<u8>>, accepted: &mut Vec<Accepted>| {
            let now = Instant::now();
            let mut moved = false;
            for (from, to) in [(a, b), (b, a)] {
                // As the driver does: only shards with work (or, here, a
                // timer that may be due: the transfer's own shard).
                for (i, d) in from.wake.dirty.iter().enumerate() {
                    if d.swap(false, Ordering::AcqRel) {
                        from.poll_shard(i, now, out, accepted);
                    }
                }
                for p in out.drain(..) {
                    moved = true;
                    to.inbound(p);
                }
            }
            moved
        };
        for i in 0..=idle {
            let Ok(s) = a.connect(SocketAddr::new(b_ip, 1000 + (i % 50_000) as u16)) else {
                continue;
            };
            streams.push(s);
            if i % 64 == 0 {
                while pump(&a, &b, &mut out, &mut accepted) {}
            }
        }
        while pump(&a, &b, &mut out, &mut accepted) {}
        let server: Vec<MeshStream> = accepted.iter().map(|x| b.stream(x)).collect();
        let (Some(client), Some(srv)) = (
            streams.last(),
            server
                .iter()
                .find(|s| Some(s.remote) == streams.last().map(|c| c.local)),
        ) else {
            return Duration::ZERO;
        };
        let chunk = vec![7u8; 64 * 1024];
        let mut buf = vec![0u8; 64 * 1024];
        let start = Instant::now();
        let (mut sent, mut got) = (0usize, 0usize);
        while got < bytes {
            if sent < bytes {
                let mut s = lock(&client.shard);
                let sock = s.sockets.get_mut::<tcp::Socket>(client.handle);
                if sock.can_send() {
                    sent += sock
                        .send_slice(&chunk[..chunk.len().min(bytes - sent)])
                        .unwrap_or(0);
                }
            }
            // Delayed ACKs and retransmissions run on timers: keep both
            // ends of the transfer polled, as the driver's timers would.
            a.wake.mark(client.index);
            b.wake.mark(srv.index);
            pump(&a, &b, &mut out, &mut accepted);
            let mut s = lock(&srv.shard);
            let sock = s.sockets.get_mut::<tcp::Socket>(srv.handle);
            while sock.can_recv() {
                got += sock.recv_slice(&mut buf).unwrap_or(0);
            }
        }
        let took = start.elapsed();
        drop(server);
        drop(streams);
        took
    }
}
