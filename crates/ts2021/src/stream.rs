//! The async shell: a [`NoiseStream`] carries plaintext over any byte
//! stream as records, and the functions that run the handshake over one.

use crate::early::{
    EARLY_PAYLOAD_HEADER_LEN, EarlyPayload, encode_early_payload, parse_early_payload,
};
use crate::error::{Error, HandshakeError, RecordError};
use crate::handshake::{
    ClientHandshake, ClientInfo, HEADER_LEN, RESPONSE_LEN, Reply, error_message, reply_header,
    respond,
};
use crate::keys::{MachinePrivateKey, MachinePublicKey};
use crate::transport::{MAX_PLAINTEXT_LEN, Transport};
use bytes::{Buf, Bytes, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Plaintext sealed per `poll_write`: 16 full records.
const WRITE_BATCH: usize = 16 * MAX_PLAINTEXT_LEN;
/// Bytes read from the underlying stream at a time.
const READ_CHUNK: usize = 8192;

/// The server's half over `io`, whose upgrade request carried `init` (the
/// caller has already written the `101 Switching Protocols`). Writes the
/// handshake response and returns the session and the client's identity.
///
/// A malformed initiation or a capability version below
/// [`crate::MIN_CAPABILITY_VERSION`] is answered with an error message (a
/// fixed text) before the error is returned; one that fails to
/// authenticate gets no answer.
pub async fn accept<T>(
    io: T,
    init: &[u8],
    server_key: &MachinePrivateKey,
) -> Result<(NoiseStream<T>, ClientInfo), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    accept_inner(io, init, server_key, None).await
}

/// As [`accept`], then sends `json` as the early payload (Tailscale's
/// `EarlyNoise`), in the same write as the handshake response.
pub async fn accept_with_early_payload<T>(
    io: T,
    init: &[u8],
    server_key: &MachinePrivateKey,
    json: &[u8],
) -> Result<(NoiseStream<T>, ClientInfo), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    accept_inner(io, init, server_key, Some(json)).await
}

async fn accept_inner<T>(
    mut io: T,
    init: &[u8],
    server_key: &MachinePrivateKey,
    early_json: Option<&[u8]>,
) -> Result<(NoiseStream<T>, ClientInfo), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let early = early_json.map(encode_early_payload).transpose()?;
    let accepted = match respond(init, server_key, &MachinePrivateKey::generate()) {
        Ok(a) => a,
        Err(e) => {
            if let Some(text) = e.client_message() {
                let sent = async {
                    io.write_all(&error_message(text)).await?;
                    io.flush().await
                };
                if let Err(write) = sent.await {
                    tracing::debug!(error = %write, "could not tell the client why its handshake was refused");
                }
            }
            return Err(e.into());
        }
    };
    let mut stream = NoiseStream::new(
        io,
        accepted.transport,
        accepted.client.machine_key,
        accepted.client.version,
        false,
    );
    stream.wbuf.extend_from_slice(&accepted.response);
    if let Some(early) = early {
        stream.transport.seal(&early, &mut stream.wbuf)?;
    }
    stream.flush().await?;
    Ok((stream, accepted.client))
}

/// The client's whole handshake over `io`: writes the initiation, reads
/// the response. (A client that sends the initiation in the upgrade
/// request's header uses [`ClientHandshake::new`] and
/// [`ClientHandshake::complete`] instead.)
pub async fn connect<T>(
    mut io: T,
    key: &MachinePrivateKey,
    server: MachinePublicKey,
    version: u16,
) -> Result<NoiseStream<T>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (handshake, init) =
        ClientHandshake::new(key, server, version, MachinePrivateKey::generate())?;
    io.write_all(&init).await?;
    io.flush().await?;
    handshake.complete(io).await
}

impl ClientHandshake {
    /// Reads the server's response (or refusal) from `io`, after the
    /// initiation went out, and finishes the handshake.
    pub async fn complete<T>(self, mut io: T) -> Result<NoiseStream<T>, Error>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let mut response = [0u8; RESPONSE_LEN];
        io.read_exact(&mut response[..HEADER_LEN]).await?;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&response[..HEADER_LEN]);
        if let Reply::Error { len } = reply_header(header)? {
            let mut text = vec![0u8; len];
            io.read_exact(&mut text).await?;
            return Err(HandshakeError::Refused {
                message: String::from_utf8_lossy(&text).into_owned(),
            }
            .into());
        }
        io.read_exact(&mut response[HEADER_LEN..]).await?;
        let (server, version) = (self.server(), self.version());
        let transport = self.finish(&response)?;
        Ok(NoiseStream::new(io, transport, server, version, true))
    }
}

/// Where a client is in reading the optional early payload.
#[derive(Debug)]
enum Early {
    /// Not yet known whether the server sent one.
    Detecting,
    /// Known: its JSON, or none.
    Done(Option<Bytes>),
}

/// A session: plaintext in and out over `T`, as records. Implements
/// tokio's `AsyncRead` and `AsyncWrite`, so HTTP/2 can run over it.
///
/// Any bad record, and any error of `T`, ends its direction: later reads
/// (or writes) fail. Writes are buffered (up to 16 records) until written
/// out by the next write or by `flush`.
#[derive(Debug)]
pub struct NoiseStream<T> {
    io: T,
    transport: Transport,
    peer: MachinePublicKey,
    version: u16,
    /// Ciphertext read and not yet opened.
    rbuf: BytesMut,
    /// Plaintext opened and not yet read.
    plain: BytesMut,
    /// Ciphertext sealed and not yet written.
    wbuf: BytesMut,
    eof: bool,
    read_dead: bool,
    write_dead: bool,
    early: Early,
}

impl<T> NoiseStream<T> {
    fn new(
        io: T,
        transport: Transport,
        peer: MachinePublicKey,
        version: u16,
        detect_early: bool,
    ) -> Self {
        Self {
            io,
            transport,
            peer,
            version,
            rbuf: BytesMut::new(),
            plain: BytesMut::new(),
            wbuf: BytesMut::new(),
            eof: false,
            read_dead: false,
            write_dead: false,
            early: if detect_early {
                Early::Detecting
            } else {
                Early::Done(None)
            },
        }
    }

    /// The other end's static key: the client's machine key on the
    /// server, the server's key on the client.
    pub fn peer(&self) -> MachinePublicKey {
        self.peer
    }

    /// The capability version the client announced in the handshake.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The Noise handshake hash of the session.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.transport.handshake_hash()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

fn dead() -> io::Error {
    io::Error::other(RecordError::Dead)
}

impl<T: AsyncRead + AsyncWrite + Unpin> NoiseStream<T> {
    /// On a client: waits until the server's first plaintext shows
    /// whether it sent an early payload, and returns its JSON. Data after
    /// it stays for reading. On a server: `None`.
    pub async fn early_payload(&mut self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.poll_early(cx)).await?;
        match &self.early {
            Early::Done(json) => Ok(json.clone()),
            Early::Detecting => Ok(None),
        }
    }

    fn read_fail(&mut self, e: io::Error) -> io::Error {
        self.read_dead = true;
        e
    }

    /// Opens one more record into `plain`; `false` at a clean end of
    /// stream.
    fn poll_record(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            match self.transport.open(&mut self.rbuf) {
                Ok(Some(record)) => {
                    if self.rbuf.is_empty() {
                        // Idle sessions hold no buffer.
                        self.rbuf = BytesMut::new();
                    }
                    if self.plain.is_empty() {
                        self.plain = record;
                    } else {
                        self.plain.extend_from_slice(&record);
                    }
                    return Poll::Ready(Ok(true));
                }
                Ok(None) => {}
                Err(e) => {
                    return Poll::Ready(Err(
                        self.read_fail(io::Error::new(io::ErrorKind::InvalidData, e))
                    ));
                }
            }
            if self.eof {
                if self.rbuf.is_empty() {
                    return Poll::Ready(Ok(false));
                }
                return Poll::Ready(Err(self.read_fail(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a record",
                ))));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.read_fail(e))),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => self.eof = true,
                Poll::Ready(Ok(())) => self.rbuf.extend_from_slice(rb.filled()),
            }
        }
    }

    /// Runs the client's early-payload detection to its end.
    fn poll_early(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_dead {
            return Poll::Ready(Err(dead()));
        }
        while let Early::Detecting = self.early {
            match parse_early_payload(&self.plain) {
                Err(e) => {
                    return Poll::Ready(Err(
                        self.read_fail(io::Error::new(io::ErrorKind::InvalidData, e))
                    ));
                }
                Ok(EarlyPayload::Absent) => self.early = Early::Done(None),
                Ok(EarlyPayload::Present { len }) => {
                    self.plain.advance(EARLY_PAYLOAD_HEADER_LEN);
                    let json = self.plain.split_to(len).freeze();
                    self.early = Early::Done(Some(json));
                }
                Ok(EarlyPayload::Incomplete) => {
                    if !ready!(self.poll_record(cx))? {
                        if self.plain.is_empty() {
                            self.early = Early::Done(None);
                        } else {
                            return Poll::Ready(Err(self.read_fail(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed inside the early payload",
                            ))));
                        }
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out all sealed records.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf)) {
                Ok(0) => {
                    self.write_dead = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.wbuf.advance(n),
                Err(e) => {
                    self.write_dead = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        self.wbuf = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for NoiseStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_early(cx))?;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Empty records are allowed: open until there is plaintext.
        while this.plain.is_empty() {
            if !ready!(this.poll_record(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
        let n = this.plain.len().min(buf.remaining());
        buf.put_slice(&this.plain[..n]);
        this.plain.advance(n);
        if this.plain.is_empty() {
            this.plain = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for NoiseStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_dead {
            return Poll::Ready(Err(dead()));
        }
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(WRITE_BATCH);
        if let Err(e) = this.transport.seal(&data[..n], &mut this.wbuf) {
            this.write_dead = true;
            return Poll::Ready(Err(io::Error::other(e)));
        }
        // Start sending; what the stream does not take now goes out on
        // the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_dead {
            return Poll::Ready(Err(dead()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_dead {
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
