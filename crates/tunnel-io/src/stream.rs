//! Stream glue shared by the edge and the connector: one tunnel stream is a
//! pair of byte pipes (a QUIC stream, or an HTTP/2 stream of the TLS
//! fallback) carrying [`Frame`]s; this module turns HTTP bodies into frames
//! and frames back into HTTP bodies, without buffering whole bodies.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use gatehouse_proto::{DATA_CHUNK, Frame, FrameCodec};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame as BodyFrame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;

/// Read half of a tunnel stream.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// Error type of the bodies built here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type both sides hand to hyper.
pub type TunnelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why a tunnel stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent something that is not a valid frame.
    #[error("bad frame")]
    Codec(#[from] gatehouse_proto::CodecError),
    /// The transport failed.
    #[error("transport")]
    Io(#[from] std::io::Error),
    /// A valid frame arrived where it is not allowed.
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    /// The peer aborted the stream.
    #[error("stream reset by peer: {0}")]
    Reset(String),
    /// The body being sent failed.
    #[error("body")]
    Body(#[source] BoxError),
}

/// Frames in, from one direction of a stream.
pub struct FrameReader {
    inner: FramedRead<BoxRead, FrameCodec>,
    done: bool,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("done", &self.done)
            .finish()
    }
}

impl FrameReader {
    /// Wraps a byte pipe.
    pub fn new(r: BoxRead) -> Self {
        Self {
            // Room for a typical request or response head; within glibc's
            // per-thread cache of small blocks, unlike 2 KiB.
            inner: FramedRead::with_capacity(r, FrameCodec, 1024),
            done: false,
        }
    }

    /// The next frame; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(r) => Ok(Some(r?)),
        }
    }

    /// Turns the rest of the stream into an HTTP body (`Data` and a final
    /// `Trailers`; `Reset` becomes an error).
    pub fn into_body(self) -> TunnelBody {
        BodyExt::boxed_unsync(FrameBody(self))
    }
}

struct FrameBody(FrameReader);

impl Body for FrameBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, BoxError>>> {
        if self.0.done {
            return Poll::Ready(None);
        }
        loop {
            let item = match self.0.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            };
            return Poll::Ready(match item {
                None => {
                    self.0.done = true;
                    None
                }
                Some(Err(e)) => {
                    self.0.done = true;
                    Some(Err(Box::new(StreamError::from(e))))
                }
                Some(Ok(Frame::Data(d))) => {
                    if d.is_empty() {
                        continue;
                    }
                    Some(Ok(BodyFrame::data(d)))
                }
                Some(Ok(Frame::Trailers(t))) => {
                    self.0.done = true;
                    Some(Ok(BodyFrame::trailers(t)))
                }
                Some(Ok(Frame::Reset(msg))) => {
                    self.0.done = true;
                    Some(Err(Box::new(StreamError::Reset(msg))))
                }
                Some(Ok(_)) => {
                    self.0.done = true;
                    Some(Err(Box::new(StreamError::Unexpected("non-body"))))
                }
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Frames out, into one direction of a stream. Frames are queued in a small
/// buffer and written together on [`FrameWriter::flush`] (or by
/// [`FrameWriter::send`], which flushes), so a small response goes out in
/// one write; large `Data` payloads are written without copying.
pub struct FrameWriter {
    inner: Sink,
    buf: BytesMut,
}

enum Sink {
    /// A QUIC stream: large payloads are handed over without a copy.
    Quic(quinn::SendStream),
    /// The body of an HTTP/2 message (TLS/TCP fallback): chunks are handed
    /// over without a copy; `None` once finished.
    Chan(Option<tokio::sync::mpsc::Sender<Bytes>>),
}

fn closed() -> StreamError {
    StreamError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "stream closed",
    ))
}

impl Sink {
    async fn write_bytes(&mut self, b: Bytes) -> Result<(), StreamError> {
        match self {
            Sink::Quic(w) => Ok(w.write_chunk(b).await.map_err(std::io::Error::from)?),
            Sink::Chan(tx) => {
                let tx = tx.as_ref().ok_or_else(closed)?;
                // A send fails only when the receiver is gone: the stream
                // is closed, and the `SendError` holds only the bytes.
                tx.send(b).await.map_err(|_unsent| closed())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        match self {
            Sink::Quic(_) | Sink::Chan(_) => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> Result<(), StreamError> {
        match self {
            Sink::Quic(w) => {
                // Finishing twice is not an error worth reporting.
                let _ = w.finish();
                Ok(())
            }
            Sink::Chan(tx) => {
                tx.take();
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").finish_non_exhaustive()
    }
}

/// Payloads up to this size are copied into the queue; larger ones are
/// written directly.
const COALESCE: usize = 16 * 1024;

impl FrameWriter {
    /// Wraps the send half of a QUIC stream.
    pub fn quic(w: quinn::SendStream) -> Self {
        Self {
            inner: Sink::Quic(w),
            buf: BytesMut::new(),
        }
    }

    /// Queues one frame without writing it.
    pub fn queue(&mut self, frame: &Frame) -> Result<(), StreamError> {
        gatehouse_proto::encode(frame, &mut self.buf).map_err(gatehouse_proto::CodecError::from)?;
        Ok(())
    }

    /// Queues body bytes as `Data` frames of at most [`DATA_CHUNK`]; large
    /// payloads are written at once (after what is queued).
    pub async fn queue_data(&mut self, mut data: Bytes) -> Result<(), StreamError> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(DATA_CHUNK));
            let head = gatehouse_proto::data_header(chunk.len())
                .map_err(gatehouse_proto::CodecError::from)?;
            self.buf.extend_from_slice(&head);
            if chunk.len() <= COALESCE {
                self.buf.extend_from_slice(&chunk);
            } else {
                self.write_queued().await?;
                self.inner.write_bytes(chunk).await?;
            }
        }
        Ok(())
    }

    async fn write_queued(&mut self) -> Result<(), StreamError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = self.buf.split().freeze();
        self.inner.write_bytes(b).await
    }

    /// Writes what is queued and flushes the pipe.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        self.write_queued().await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends one frame now (with anything queued before it).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), StreamError> {
        self.queue(frame)?;
        self.flush().await
    }

    /// Sends body bytes now.
    pub async fn send_data(&mut self, data: Bytes) -> Result<(), StreamError> {
        self.queue_data(data).await?;
        self.flush().await
    }

    /// Writes what is queued and ends this direction of the stream.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        self.write_queued().await?;
        self.inner.shutdown().await?;
        Ok(())
    }
}

/// Sends a whole HTTP body as `Data` frames and a final `Trailers` frame
/// when it has trailers, then ends the direction. Frames are flushed as soon
/// as the body has nothing more ready, so streams (SSE, gRPC) are never held
/// back, while a small body leaves with its head in one write. A failing
/// body sends `Reset` so the peer does not take a truncated body for a
/// complete one.
pub async fn pump_body<B>(body: B, w: &mut FrameWriter) -> Result<(), StreamError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    use futures::FutureExt;
    let mut body = body;
    loop {
        let next = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                w.flush().await?;
                body.frame().await
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                let e: BoxError = e.into();
                let _ = w.send(&Frame::Reset(e.to_string())).await;
                let _ = w.finish().await;
                return Err(StreamError::Body(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => w.queue_data(data).await?,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        w.queue(&Frame::Trailers(t))?;
                    }
                }
            },
        }
    }
    w.finish().await
}

/// Copies raw bytes both ways between an upgraded connection and a tunnel
/// stream (WebSocket, raw TCP) until both directions end.
pub async fn bridge<IO>(io: IO, mut r: FrameReader, mut w: FrameWriter) -> Result<(), StreamError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut io_r, mut io_w) = tokio::io::split(io);
    let up = async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let n = io_r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            w.send_data(Bytes::copy_from_slice(&buf[..n])).await?;
        }
        w.finish().await
    };
    let down = async {
        while let Some(f) = r.next().await? {
            match f {
                Frame::Data(d) => io_w.write_all(&d).await?,
                Frame::Reset(m) => return Err(StreamError::Reset(m)),
                _ => return Err(StreamError::Unexpected("non-data after upgrade")),
            }
        }
        io_w.shutdown().await?;
        Ok::<(), StreamError>(())
    };
    let (a, b) = tokio::join!(up, down);
    a.and(b)
}

/// A body from fixed bytes.
pub fn full(b: impl Into<Bytes>) -> TunnelBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> TunnelBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Turns the request body of the HTTP/2 fallback (an incoming body) into a
/// byte pipe, and gives a byte pipe whose bytes become a response body.
pub mod h2pipe {
    use super::*;
    use futures::TryStreamExt;

    /// The read half over an incoming HTTP/2 body.
    pub fn reader<B>(body: B) -> BoxRead
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let s = body
            .into_data_stream()
            .map_err(|e| std::io::Error::other(e.into()));
        Box::new(tokio_util::io::StreamReader::new(s))
    }

    /// A frame writer and the body that carries what is written to it.
    pub fn writer() -> (FrameWriter, ChanBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let w = FrameWriter {
            inner: Sink::Chan(Some(tx)),
            buf: BytesMut::new(),
        };
        (w, ChanBody { rx, first: None })
    }

    /// The body carrying what the [`FrameWriter`] of [`writer`] writes. It
    /// reports its end as soon as the writer has finished and every chunk
    /// has been taken, so hyper marks the last `DATA` frame as the end of
    /// the stream instead of sending an empty one after it.
    #[derive(Debug)]
    pub struct ChanBody {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        first: Option<Bytes>,
    }

    impl ChanBody {
        /// Waits until the writer has written its first bytes (or is gone):
        /// a response sent after this leaves with them, its `HEADERS` and
        /// first `DATA` frame in one write.
        pub async fn first_bytes(&mut self) {
            if self.first.is_none() {
                self.first = self.rx.recv().await;
            }
        }
    }

    impl Body for ChanBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<BodyFrame<Bytes>, BoxError>>> {
            if let Some(b) = self.first.take() {
                return Poll::Ready(Some(Ok(BodyFrame::data(b))));
            }
            self.rx
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(BodyFrame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.first.is_none() && self.rx.is_closed() && self.rx.is_empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_pipe_ends_with_its_last_chunk() {
        let (mut w, mut body) = h2pipe::writer();
        assert!(!body.is_end_stream());
        w.queue(&Frame::Ping(1)).unwrap();
        w.finish().await.unwrap();
        body.first_bytes().await;
        assert!(
            !body.is_end_stream(),
            "the first bytes are still to be taken"
        );
        let f = body.frame().await.unwrap().unwrap();
        assert!(f.is_data());
        // hyper asks right after a chunk: the end rides on the last DATA
        // frame instead of an empty one after it.
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());

        // A writer gone without writing: the wait ends, the body is empty.
        let (w, mut body) = h2pipe::writer();
        drop(w);
        body.first_bytes().await;
        assert!(body.is_end_stream());
    }
}
