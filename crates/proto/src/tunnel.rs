//! The tunnel protocol (`docs/protocol/tunnel.md`), the link between the
//! public edge and the connector that dials it from inside a cluster: frame
//! types, their byte encoding, and a sans-IO decoder that never panics on
//! hostile input. The edge and the connector shells read bytes from QUIC or
//! TLS streams and hand them to [`decode`] (or [`FrameCodec`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Protocol version carried in [`Hello`].
pub const VERSION: u16 = 1;
/// ALPN of the QUIC transport.
pub const ALPN_QUIC: &[u8] = b"gatehouse-tunnel/1";
/// ALPN of the TLS/TCP fallback transport (HTTP/2 streams carry the frames).
pub const ALPN_TCP: &[u8] = b"gatehouse-tunnel-h2/1";
/// Largest frame payload a decoder accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Size writers split bodies into.
pub const DATA_CHUNK: usize = 64 * 1024;
/// Length of the fixed frame header: type (1) + payload length (4).
pub const HEADER_LEN: usize = 5;
/// Largest number of header fields in one head or trailers frame.
pub const MAX_HEADERS: usize = 256;
/// Application error code a draining connector closes its connection with;
/// streams the connector never answered were not processed and may be retried.
pub const CLOSE_DRAINED: u32 = 0x10;
/// Application error code for a refused token.
pub const CLOSE_REFUSED: u32 = 0x11;
/// Application error code for a protocol violation.
pub const CLOSE_PROTOCOL: u32 = 0x12;
/// Application error code for an edge shutting down.
pub const CLOSE_EDGE_SHUTDOWN: u32 = 0x13;
/// Application error code for a connection the edge found unresponsive (a
/// liveness probe went unanswered).
pub const CLOSE_UNRESPONSIVE: u32 = 0x14;

/// First frame of a connection, from the connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version ([`VERSION`]).
    pub version: u16,
    /// The tunnel token, `id.secret` ([`Token`]).
    pub token: String,
    /// Random identifier of the connector process.
    pub connector_id: String,
    /// Index of this connection among the connector's HA connections.
    pub conn_index: u8,
}

/// The edge's answer to an accepted [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Name of the tunnel the token belongs to.
    pub tunnel: String,
    /// Identifier the edge gave this connection (for logs).
    pub connection_id: u64,
    /// Heartbeat interval the edge expects, in milliseconds.
    pub heartbeat_ms: u32,
}

/// Start of a proxied request, from the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request id shared by the edge's and the connector's logs.
    pub request_id: String,
    /// HTTP method.
    pub method: Method,
    /// Scheme the client used at the edge (`https` or `http`).
    pub scheme: String,
    /// Host the client asked for (no port).
    pub authority: String,
    /// Canonical path plus query, as the origin must receive it.
    pub path: String,
    /// Client socket address as seen by the edge.
    pub client_addr: String,
    /// Header fields (hop-by-hop fields already removed).
    pub headers: HeaderMap,
}

/// Start of a response, from the connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
}

/// One frame of the tunnel protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Connector → edge, first frame of a connection.
    Hello(Hello),
    /// Edge → connector: token accepted.
    Welcome(Welcome),
    /// Edge → connector: token refused (reason), the connection closes.
    Refused(String),
    /// Heartbeat request carrying an opaque nonce.
    Ping(u64),
    /// Heartbeat answer echoing the nonce.
    Pong(u64),
    /// Connector → edge: send no new streams on this connection.
    GoAway,
    /// Edge → connector: no new streams will be opened on this connection.
    GoAwayAck,
    /// Edge → connector: a request starts on this stream.
    RequestHead(RequestHead),
    /// Connector → edge: the response starts.
    ResponseHead(ResponseHead),
    /// Body bytes (or raw bytes after an upgrade).
    Data(Bytes),
    /// Trailer fields; the last frame of that direction.
    Trailers(HeaderMap),
    /// Abort of the stream with a reason.
    Reset(String),
}

const T_HELLO: u8 = 0x01;
const T_WELCOME: u8 = 0x02;
const T_REFUSED: u8 = 0x03;
const T_PING: u8 = 0x04;
const T_PONG: u8 = 0x05;
const T_GOAWAY: u8 = 0x06;
const T_GOAWAY_ACK: u8 = 0x07;
const T_REQUEST_HEAD: u8 = 0x10;
const T_RESPONSE_HEAD: u8 = 0x11;
const T_DATA: u8 = 0x12;
const T_TRAILERS: u8 = 0x13;
const T_RESET: u8 = 0x14;

/// Why bytes are not a valid frame. The stream or connection they came from
/// must be closed; nothing else is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The declared payload length exceeds [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The payload ended before a field did.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// The payload has bytes after its last field.
    #[error("{0} frame has trailing bytes")]
    Trailing(&'static str),
    /// A text field is not UTF-8.
    #[error("field {0} is not UTF-8")]
    Utf8(&'static str),
    /// The method is not a valid HTTP method.
    #[error("invalid HTTP method")]
    Method,
    /// The status is outside 100..=999.
    #[error("invalid HTTP status {0}")]
    Status(u16),
    /// A header name or value is invalid.
    #[error("invalid header field")]
    Header,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("too many header fields")]
    TooManyHeaders,
}

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field or the whole payload is longer than the format allows.
    #[error("{0} too long for a frame")]
    TooLong(&'static str),
}

/// Error of [`FrameCodec`]: a bad frame or the transport's I/O error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent bytes that are not a frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The frame could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The underlying transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes one frame from the front of `buf`, consuming it. Returns
/// `Ok(None)` when more bytes are needed. Never panics.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let ty = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(len));
    }
    if !known_type(ty) {
        return Err(DecodeError::UnknownType(ty));
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(len).freeze();
    decode_payload(ty, payload).map(Some)
}

fn known_type(ty: u8) -> bool {
    matches!(ty, T_HELLO..=T_GOAWAY_ACK | T_REQUEST_HEAD..=T_RESET)
}

fn decode_payload(ty: u8, payload: Bytes) -> Result<Frame, DecodeError> {
    if ty == T_DATA {
        return Ok(Frame::Data(payload));
    }
    let name = type_name(ty);
    let mut r = Reader { buf: payload, name };
    let frame = match ty {
        T_HELLO => Frame::Hello(Hello {
            version: r.u16()?,
            token: r.str16("token")?,
            connector_id: r.str16("connector_id")?,
            conn_index: r.u8()?,
        }),
        T_WELCOME => Frame::Welcome(Welcome {
            tunnel: r.str16("tunnel")?,
            connection_id: r.u64()?,
            heartbeat_ms: r.u32()?,
        }),
        T_REFUSED => Frame::Refused(r.str16("reason")?),
        T_PING => Frame::Ping(r.u64()?),
        T_PONG => Frame::Pong(r.u64()?),
        T_GOAWAY => Frame::GoAway,
        T_GOAWAY_ACK => Frame::GoAwayAck,
        T_REQUEST_HEAD => {
            let request_id = r.str16("request_id")?;
            let method = Method::from_bytes(&r.bytes16()?).map_err(|_| DecodeError::Method)?;
            Frame::RequestHead(RequestHead {
                request_id,
                method,
                scheme: r.str16("scheme")?,
                authority: r.str16("authority")?,
                path: r.str16("path")?,
                client_addr: r.str16("client_addr")?,
                headers: r.headers()?,
            })
        }
        T_RESPONSE_HEAD => {
            let code = r.u16()?;
            let status = StatusCode::from_u16(code).map_err(|_| DecodeError::Status(code))?;
            Frame::ResponseHead(ResponseHead {
                status,
                headers: r.headers()?,
            })
        }
        T_TRAILERS => Frame::Trailers(r.headers()?),
        _ => Frame::Reset(r.str16("reason")?),
    };
    if r.buf.has_remaining() {
        return Err(DecodeError::Trailing(name));
    }
    Ok(frame)
}

fn type_name(ty: u8) -> &'static str {
    match ty {
        T_HELLO => "hello",
        T_WELCOME => "welcome",
        T_REFUSED => "refused",
        T_PING => "ping",
        T_PONG => "pong",
        T_GOAWAY => "goaway",
        T_GOAWAY_ACK => "goaway-ack",
        T_REQUEST_HEAD => "request-head",
        T_RESPONSE_HEAD => "response-head",
        T_DATA => "data",
        T_TRAILERS => "trailers",
        _ => "reset",
    }
}

struct Reader {
    buf: Bytes,
    name: &'static str,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated(self.name))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn bytes16(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn bytes32(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes16()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8(field))
    }
    fn headers(&mut self) -> Result<HeaderMap, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > MAX_HEADERS {
            return Err(DecodeError::TooManyHeaders);
        }
        // Room for the few fields the receiver adds (Host, Content-Length)
        // without growing the map.
        let mut map = HeaderMap::with_capacity(n + 2);
        for _ in 0..n {
            let name = header_name(&self.bytes16()?)?;
            let value =
                HeaderValue::from_maybe_shared(self.bytes32()?).map_err(|_| DecodeError::Header)?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// Header carrying the client's IP address to the origin (always set by the
/// edge; a value sent by the client is replaced).
pub const CLIENT_IP_HEADER: &str = "gatehouse-client-ip";
/// Header carrying the request id to the origin.
pub const REQUEST_ID_HEADER: &str = "gatehouse-request-id";

/// Names outside `http`'s standard set that every forwarded request
/// carries: [`HeaderName::from_bytes`] would allocate a copy of each.
const COMMON_NAMES: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static(CLIENT_IP_HEADER),
    HeaderName::from_static(REQUEST_ID_HEADER),
];

fn header_name(raw: &[u8]) -> Result<HeaderName, DecodeError> {
    if let Some(n) = COMMON_NAMES.iter().find(|n| n.as_str().as_bytes() == raw) {
        return Ok(n.clone());
    }
    HeaderName::from_bytes(raw).map_err(|_| DecodeError::Header)
}

/// An upper bound of the encoded size of a head or trailers frame's
/// fields, reserved up front so that encoding grows the buffer once.
fn fields_len(frame: &Frame) -> usize {
    let headers = |h: &HeaderMap| {
        2 + h
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum::<usize>()
    };
    match frame {
        Frame::RequestHead(h) => {
            12 + h.request_id.len()
                + h.method.as_str().len()
                + h.scheme.len()
                + h.authority.len()
                + h.path.len()
                + h.client_addr.len()
                + headers(&h.headers)
        }
        Frame::ResponseHead(h) => 2 + headers(&h.headers),
        Frame::Trailers(t) => headers(t),
        _ => 0,
    }
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), EncodeError> {
    if let Frame::Data(data) = frame {
        if data.len() > MAX_PAYLOAD {
            return Err(EncodeError::TooLong("data"));
        }
        out.reserve(HEADER_LEN + data.len());
        out.put_u8(T_DATA);
        out.put_u32(data.len() as u32);
        out.put_slice(data);
        return Ok(());
    }
    out.reserve(HEADER_LEN + fields_len(frame));
    let start = out.len();
    out.put_u8(0);
    out.put_u32(0);
    let ty = match frame {
        Frame::Hello(h) => {
            out.put_u16(h.version);
            put_str16(out, &h.token)?;
            put_str16(out, &h.connector_id)?;
            out.put_u8(h.conn_index);
            T_HELLO
        }
        Frame::Welcome(w) => {
            put_str16(out, &w.tunnel)?;
            out.put_u64(w.connection_id);
            out.put_u32(w.heartbeat_ms);
            T_WELCOME
        }
        Frame::Refused(reason) => {
            put_str16(out, reason)?;
            T_REFUSED
        }
        Frame::Ping(n) => {
            out.put_u64(*n);
            T_PING
        }
        Frame::Pong(n) => {
            out.put_u64(*n);
            T_PONG
        }
        Frame::GoAway => T_GOAWAY,
        Frame::GoAwayAck => T_GOAWAY_ACK,
        Frame::RequestHead(h) => {
            put_str16(out, &h.request_id)?;
            put_str16(out, h.method.as_str())?;
            put_str16(out, &h.scheme)?;
            put_str16(out, &h.authority)?;
            put_str16(out, &h.path)?;
            put_str16(out, &h.client_addr)?;
            put_headers(out, &h.headers)?;
            T_REQUEST_HEAD
        }
        Frame::ResponseHead(h) => {
            out.put_u16(h.status.as_u16());
            put_headers(out, &h.headers)?;
            T_RESPONSE_HEAD
        }
        Frame::Trailers(t) => {
            put_headers(out, t)?;
            T_TRAILERS
        }
        Frame::Reset(reason) => {
            put_str16(out, reason)?;
            T_RESET
        }
        Frame::Data(_) => T_DATA,
    };
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(EncodeError::TooLong("frame"));
    }
    out[start] = ty;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

fn put_str16(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_bytes16(out, s.as_bytes())
}

fn put_bytes16(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::TooLong("field"))?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

fn put_headers(out: &mut BytesMut, h: &HeaderMap) -> Result<(), EncodeError> {
    if h.len() > MAX_HEADERS {
        return Err(EncodeError::TooLong("header list"));
    }
    out.put_u16(h.len() as u16);
    for (name, value) in h {
        put_bytes16(out, name.as_str().as_bytes())?;
        let v = value.as_bytes();
        out.put_u32(u32::try_from(v.len()).map_err(|_| EncodeError::TooLong("header value"))?);
        out.put_slice(v);
    }
    Ok(())
}

/// The header of a `Data` frame of `len` bytes, for writers that send the
/// payload without copying it into a frame buffer.
pub fn data_header(len: usize) -> Result<[u8; HEADER_LEN], EncodeError> {
    if len > MAX_PAYLOAD {
        return Err(EncodeError::TooLong("data"));
    }
    let mut h = [T_DATA, 0, 0, 0, 0];
    h[1..].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(h)
}

/// [`tokio_util::codec`] adapter over [`decode`] and [`encode`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = CodecError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(&item, dst)?)
    }
}

#[cfg(test)]
mod tests;
