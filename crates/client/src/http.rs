//! HTTPS calls to control: one connection per call (and one long-lived
//! connection per map stream), HTTP/1.1 over rustls.

use crate::identity::Identity;
use crate::join::{Join, JoinError};
use crate::tls;
use bytes::Bytes;
use gatehouse_proto::control::{
    AdminToken, ApiError, ApproveDevice, AuditEntry, CreateKey, CreateOAuthClient, CreateUser,
    EndpointsRequest, KeyInfo, MapMessage, NodeInfo, OAuthClientInfo, PendingDevice,
    RegisterRequest, RegisterResponse, RenewRequest, RenewResponse, TokenResponse, User,
};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::Error as PemError;
use rustls::pki_types::{InvalidDnsNameError, ServerName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a call to control failed.
///
/// Each message names what was being done; the underlying error, where there
/// is one, is the `source()` (print the chain to see both).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("connecting to {addr}")]
    Connect {
        /// Where.
        addr: String,
        /// What happened.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than allowed.
    #[error("connecting to {addr}: timed out")]
    ConnectTimeout {
        /// Where.
        addr: String,
    },
    /// The control address (of an identity) does not parse.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// TLS setup or handshake failed (including a pin mismatch).
    #[error("TLS")]
    Tls(#[from] TlsError),
    /// The HTTP exchange failed: the connection broke or closed early.
    #[error("HTTP")]
    Transport(#[source] hyper::Error),
    /// A request could not be built.
    #[error("building the request")]
    Request(#[source] http::Error),
    /// The HTTP exchange went wrong in a way the caller describes (such as
    /// a stream that fell silent); there is no underlying error.
    #[error("HTTP: {0}")]
    Http(String),
    /// Control answered with an error.
    #[error("control refused ({status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Control's message.
        message: String,
    },
    /// A request body could not be encoded.
    #[error("encoding the request")]
    Encode(#[source] serde_json::Error),
    /// An answer did not parse.
    #[error("unexpected answer")]
    Json(#[source] serde_json::Error),
    /// An answer parsed but is not what the protocol allows (described by
    /// the caller); there is no underlying error.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether control refused the caller's credential (`401`). For a node
    /// this means control no longer knows its key: the key expired (its
    /// lifetime ended or an administrator expired it) or the node was
    /// deleted. Nothing else answers `401` behind the pinned CA, so a node
    /// stops using its identity on it; every other failure is transient.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Api { status: 401, .. })
    }

    /// Whether trying again later may succeed: control could not be
    /// reached, the connection or handshake broke, or it answered `429` or
    /// a server error. Not when it refused the request (any other `4xx`)
    /// or the request could not be made at all.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Transport(_)
            | ClientError::Http(_)
            | ClientError::Tls(TlsError::Handshake(_) | TlsError::HandshakeTimeout) => true,
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// What went wrong with TLS towards control.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Control's host is not a name or address TLS can check.
    #[error("{host:?} is not a valid server name")]
    ServerName {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: InvalidDnsNameError,
    },
    /// The handshake failed (a CA that does not match the pin shows here).
    #[error("handshake")]
    Handshake(#[source] std::io::Error),
    /// The handshake took longer than allowed.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// A PEM object (the CA, the machine certificate or key) does not parse.
    #[error("{what}")]
    Pem {
        /// Which object.
        what: &'static str,
        /// Why.
        #[source]
        source: PemError,
    },
    /// A CA certificate was refused as a trust root.
    #[error("CA")]
    Root(#[source] rustls::Error),
    /// The machine certificate and key were refused.
    #[error("machine certificate")]
    ClientCert(#[source] rustls::Error),
    /// The TLS provider offers none of the protocol versions asked for.
    #[error("protocol versions")]
    Versions(#[source] rustls::Error),
    /// The join string carries no CA pin.
    #[error("the join string has no #sha256: pin")]
    NoPin,
    /// The handshake succeeded without the pinned CA being seen.
    #[error("no pinned CA seen")]
    NoPinnedCa,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn connect_tls(
    join: &Join,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let addr = join.authority();
    // `Elapsed` says only that the deadline passed, which the variants say.
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((join.host.as_str(), join.port)),
    )
    .await
    .map_err(|_elapsed| ClientError::ConnectTimeout { addr: addr.clone() })?
    .map_err(|source| ClientError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(join.host.clone()).map_err(|source| TlsError::ServerName {
        host: join.host.clone(),
        source,
    })?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .map_err(|_elapsed| TlsError::HandshakeTimeout)?
        .map_err(TlsError::Handshake)?;
    Ok(tls)
}

async fn open(
    join: &Join,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, ClientError> {
    let tls = connect_tls(join, cfg).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(ClientError::Transport)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    join: &Join,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<http::Response<Incoming>, ClientError> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, join.authority());
    for (k, v) in headers {
        b = b.header(k, v);
    }
    let req = match body {
        Some((ct, bytes)) => b
            .header(header::CONTENT_TYPE, ct)
            .body(Full::new(Bytes::from(bytes))),
        None => b.body(Full::new(Bytes::new())),
    }
    .map_err(ClientError::Request)?;
    sender
        .send_request(req)
        .await
        .map_err(ClientError::Transport)
}

async fn body_bytes(resp: http::Response<Incoming>) -> Result<(StatusCode, Bytes), ClientError> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(ClientError::Transport)?
        .to_bytes();
    Ok((status, bytes))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ApiError>(bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(ClientError::Json)
}

/// One call: connect, send, read the whole answer; non-2xx is an error.
async fn call(
    join: &Join,
    cfg: &Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<Bytes, ClientError> {
    let mut sender = open(join, Arc::clone(cfg)).await?;
    let resp = send(&mut sender, join, method, path, headers, body).await?;
    let (status, bytes) = body_bytes(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    Ok(bytes)
}

fn json_body<B: Serialize>(b: &B) -> Result<Option<(&'static str, Vec<u8>)>, ClientError> {
    Ok(Some((
        "application/json",
        serde_json::to_vec(b).map_err(ClientError::Encode)?,
    )))
}

/// Registers a node (trusting only `ca_pem`).
pub async fn register(
    join: &Join,
    ca_pem: &str,
    req: &RegisterRequest,
) -> Result<RegisterResponse, ClientError> {
    let cfg = tls::config(ca_pem, None)?;
    let bytes = call(
        join,
        &cfg,
        Method::POST,
        "/machine/v1/register",
        &[],
        json_body(req)?,
    )
    .await?;
    decode(&bytes)
}

/// A registered node talking to control with its machine certificate.
#[derive(Debug, Clone)]
pub struct NodeClient {
    join: Join,
    cfg: Arc<rustls::ClientConfig>,
}

/// An open map stream.
#[derive(Debug)]
pub struct MapStream {
    body: Incoming,
    buf: Vec<u8>,
    _sender: SendRequest<Full<Bytes>>,
}

/// Longest map message accepted (a full map of a very large mesh).
const MAX_LINE: usize = 256 << 20;

impl MapStream {
    /// The next message; `None` when control closed the stream.
    pub async fn next(&mut self) -> Result<Option<MapMessage>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let msg = serde_json::from_slice(&line[..i]).map_err(ClientError::Json)?;
                return Ok(Some(msg));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Transport(e)),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > MAX_LINE {
                            return Err(ClientError::Decode("map message too large".into()));
                        }
                    }
                }
            }
        }
    }
}

/// Registers a node and returns its identity (keys made locally).
pub(crate) async fn join_mesh(
    join: &Join,
    ca_pem: &str,
    auth_key: &str,
    hostname: &str,
    shared_name: bool,
) -> Result<Identity, crate::IdentityOrClientError> {
    let pending = crate::PendingIdentity::generate()?;
    let req = RegisterRequest {
        auth_key: auth_key.to_string(),
        hostname: hostname.to_string(),
        wireguard_key: pending.wireguard_public(),
        machine_csr: pending.machine_csr()?,
        serving_csr: pending.serving_csr()?,
        shared_name,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let resp = register(join, ca_pem, &req).await?;
    Ok(pending.complete(&join.url(), resp))
}

/// Registers without a pre-auth key: control answers with the URL where
/// the node is approved (an administrator's command, or the sign-in of the
/// person who opens it); `on_url` is called with it once, and the node waits
/// until it is approved (asking again after each minute control holds the
/// request).
pub(crate) async fn join_interactively(
    join: &Join,
    ca_pem: &str,
    hostname: &str,
    on_url: &mut (dyn FnMut(&str) + Send),
) -> Result<Identity, crate::IdentityOrClientError> {
    let pending = crate::PendingIdentity::generate()?;
    let mut req = gatehouse_proto::control::InteractiveRegisterRequest {
        hostname: hostname.to_string(),
        wireguard_key: pending.wireguard_public(),
        machine_csr: pending.machine_csr()?,
        serving_csr: pending.serving_csr()?,
        version: env!("CARGO_PKG_VERSION").to_string(),
        wait: String::new(),
    };
    let cfg = tls::config(ca_pem, None)?;
    let mut shown = String::new();
    loop {
        let bytes = call(
            join,
            &cfg,
            Method::POST,
            "/machine/v1/register/interactive",
            &[],
            json_body(&req)?,
        )
        .await?;
        let resp: gatehouse_proto::control::InteractiveRegisterResponse = decode(&bytes)?;
        if let Some(node) = resp.node {
            return Ok(pending.complete(&join.url(), node));
        }
        if resp.auth_url != shown {
            on_url(&resp.auth_url);
            shown = resp.auth_url.clone();
        }
        req.wait = resp.code;
    }
}

impl NodeClient {
    /// A client for a registered node.
    pub fn new(id: &Identity) -> Result<Self, ClientError> {
        let join = Join::parse(&id.control)?;
        let cfg = tls::config(&id.ca_cert, Some((&id.machine_cert, &id.machine_key)))?;
        Ok(NodeClient { join, cfg })
    }

    /// Registers with a pre-auth key: generates keys, sends only public
    /// parts, and returns the identity (to be saved by the caller).
    pub async fn register(
        join: &Join,
        ca_pem: &str,
        auth_key: &str,
        hostname: &str,
    ) -> Result<Identity, crate::IdentityOrClientError> {
        join_mesh(join, ca_pem, auth_key, hostname, false).await
    }

    /// Registers without a pre-auth key and waits to be approved (see
    /// [`join_interactively`]): `on_url` is told where.
    pub async fn register_interactive(
        join: &Join,
        ca_pem: &str,
        hostname: &str,
        on_url: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Identity, crate::IdentityOrClientError> {
        join_interactively(join, ca_pem, hostname, on_url).await
    }

    /// [`NodeClient::register`] as one replica of the shared name
    /// `hostname` (see `RegisterRequest::shared_name`).
    pub async fn register_replica(
        join: &Join,
        ca_pem: &str,
        auth_key: &str,
        hostname: &str,
    ) -> Result<Identity, crate::IdentityOrClientError> {
        join_mesh(join, ca_pem, auth_key, hostname, true).await
    }

    /// Opens the map stream.
    pub async fn map(&self) -> Result<MapStream, ClientError> {
        let mut sender = open(&self.join, Arc::clone(&self.cfg)).await?;
        let resp = send(
            &mut sender,
            &self.join,
            Method::GET,
            "/machine/v1/map",
            &[],
            None,
        )
        .await?;
        if !resp.status().is_success() {
            let (status, bytes) = body_bytes(resp).await?;
            return Err(api_error(status, &bytes));
        }
        Ok(MapStream {
            body: resp.into_body(),
            buf: Vec::new(),
            _sender: sender,
        })
    }

    /// Whether control is on this machine ([`Join::is_local`]).
    pub fn control_is_local(&self) -> bool {
        self.join.is_local()
    }

    /// Announces the node's direct endpoints, disco key and home relay.
    pub async fn set_endpoints(&self, body: &EndpointsRequest) -> Result<(), ClientError> {
        call(
            &self.join,
            &self.cfg,
            Method::POST,
            "/machine/v1/endpoints",
            &[],
            json_body(body)?,
        )
        .await?;
        Ok(())
    }

    /// Asks for a new serving certificate.
    pub async fn renew(&self, serving_csr: &str) -> Result<String, ClientError> {
        let body = RenewRequest {
            serving_csr: serving_csr.to_string(),
        };
        let bytes = call(
            &self.join,
            &self.cfg,
            Method::POST,
            "/machine/v1/renew",
            &[],
            json_body(&body)?,
        )
        .await?;
        Ok(decode::<RenewResponse>(&bytes)?.serving_cert)
    }
}

/// The admin API, with a bearer token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    join: Join,
    cfg: Arc<rustls::ClientConfig>,
    token: String,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl AdminClient {
    /// A client for control at `join` (its CA in `ca_pem`).
    pub fn new(join: Join, ca_pem: &str, token: &str) -> Result<Self, ClientError> {
        Ok(AdminClient {
            cfg: tls::config(ca_pem, None)?,
            join,
            token: token.trim().to_string(),
        })
    }

    fn auth(&self) -> Vec<(header::HeaderName, String)> {
        vec![(header::AUTHORIZATION, format!("Bearer {}", self.token))]
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&call(&self.join, &self.cfg, Method::GET, path, &self.auth(), None).await?)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        decode(
            &call(
                &self.join,
                &self.cfg,
                Method::POST,
                path,
                &self.auth(),
                json_body(body)?,
            )
            .await?,
        )
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        call(
            &self.join,
            &self.cfg,
            Method::DELETE,
            path,
            &self.auth(),
            None,
        )
        .await?;
        Ok(())
    }

    /// Users.
    pub async fn users(&self) -> Result<Vec<User>, ClientError> {
        self.get("/api/v1/users").await
    }

    /// Creates a user.
    pub async fn create_user(&self, login: &str) -> Result<User, ClientError> {
        self.post(
            "/api/v1/users",
            &CreateUser {
                login: login.into(),
            },
        )
        .await
    }

    /// Deletes a user.
    pub async fn delete_user(&self, login: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/users/{}", enc(login))).await
    }

    /// Nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get("/api/v1/nodes").await
    }

    /// Deletes a node (id or name).
    pub async fn delete_node(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/nodes/{}", enc(id))).await
    }

    /// Expires a node's key now (id or name).
    pub async fn expire_node(&self, id: &str) -> Result<(), ClientError> {
        call(
            &self.join,
            &self.cfg,
            Method::POST,
            &format!("/api/v1/nodes/{}/expire", enc(id)),
            &self.auth(),
            None,
        )
        .await?;
        Ok(())
    }

    /// Devices waiting for approval.
    pub async fn registrations(&self) -> Result<Vec<PendingDevice>, ClientError> {
        self.get("/api/v1/registrations").await
    }

    /// Approves the device waiting under `code` for `user`.
    pub async fn approve(&self, code: &str, user: &str) -> Result<NodeInfo, ClientError> {
        self.post(
            &format!("/api/v1/registrations/{}/approve", enc(code)),
            &ApproveDevice { user: user.into() },
        )
        .await
    }

    /// Pre-auth keys.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>, ClientError> {
        self.get("/api/v1/keys").await
    }

    /// Mints a pre-auth key (its text is in `key`, shown once).
    pub async fn create_key(&self, req: &CreateKey) -> Result<KeyInfo, ClientError> {
        self.post("/api/v1/keys", req).await
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/keys/{}", enc(id))).await
    }

    /// OAuth clients.
    pub async fn oauth_clients(&self) -> Result<Vec<OAuthClientInfo>, ClientError> {
        self.get("/api/v1/oauth/clients").await
    }

    /// Creates an OAuth client (its secret is in `secret`, shown once).
    pub async fn create_oauth(
        &self,
        req: &CreateOAuthClient,
    ) -> Result<OAuthClientInfo, ClientError> {
        self.post("/api/v1/oauth/clients", req).await
    }

    /// Revokes an OAuth client and its tokens.
    pub async fn revoke_oauth(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/oauth/clients/{}", enc(id)))
            .await
    }

    /// Replaces the admin token: the one this client uses stops working.
    pub async fn rotate_admin_token(&self) -> Result<AdminToken, ClientError> {
        self.post("/api/v1/admin/token", &serde_json::json!({}))
            .await
    }

    /// Exchanges OAuth client credentials for an access token.
    pub async fn oauth_token(
        join: &Join,
        ca_pem: &str,
        client_secret: &str,
        scopes: Option<&str>,
    ) -> Result<TokenResponse, ClientError> {
        let cfg = tls::config(ca_pem, None)?;
        let mut form = format!(
            "grant_type=client_credentials&client_secret={}",
            enc(client_secret)
        );
        if let Some(s) = scopes {
            form.push_str(&format!("&scope={}", enc(s)));
        }
        let bytes = call(
            join,
            &cfg,
            Method::POST,
            "/api/v1/oauth/token",
            &[],
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        )
        .await?;
        decode(&bytes)
    }

    /// The policy file.
    pub async fn policy(&self) -> Result<String, ClientError> {
        let b = call(
            &self.join,
            &self.cfg,
            Method::GET,
            "/api/v1/policy",
            &self.auth(),
            None,
        )
        .await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Replaces the policy; returns its version. Refused whole if invalid.
    pub async fn set_policy(&self, text: &str) -> Result<i64, ClientError> {
        let b = call(
            &self.join,
            &self.cfg,
            Method::PUT,
            "/api/v1/policy",
            &self.auth(),
            Some(("application/hujson", text.as_bytes().to_vec())),
        )
        .await?;
        let v: serde_json::Value = decode(&b)?;
        v["version"]
            .as_i64()
            .ok_or_else(|| ClientError::Decode("no version".into()))
    }

    /// The latest audit entries.
    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditEntry>, ClientError> {
        self.get(&format!("/api/v1/audit?limit={limit}")).await
    }

    /// The mesh CA (PEM).
    pub async fn ca(&self) -> Result<String, ClientError> {
        let b = call(&self.join, &self.cfg, Method::GET, "/api/v1/ca", &[], None).await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Any GET, raw (for documents such as the OpenAPI description).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, ClientError> {
        call(&self.join, &self.cfg, Method::GET, path, &self.auth(), None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            message: "x".into(),
        }
    }

    #[test]
    fn only_a_401_refuses_the_credential() {
        assert!(api(401).is_unauthorized());
        for s in [400, 403, 404, 409, 429, 500, 503] {
            assert!(!api(s).is_unauthorized(), "{s}");
        }
        let refused = ClientError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(!refused.is_unauthorized());
        assert!(!ClientError::Http("silent".into()).is_unauthorized());
    }

    #[test]
    fn unreachable_throttled_or_failing_control_is_transient_a_refusal_is_not() {
        let refused = ClientError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(refused.is_transient());
        assert!(
            ClientError::ConnectTimeout {
                addr: "10.0.0.1:443".into()
            }
            .is_transient()
        );
        assert!(ClientError::Tls(TlsError::HandshakeTimeout).is_transient());
        assert!(ClientError::Http("silent".into()).is_transient());
        for s in [429, 500, 502, 503] {
            assert!(api(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(!api(s).is_transient(), "{s}");
        }
        assert!(!ClientError::Tls(TlsError::NoPin).is_transient());
        assert!(!ClientError::Decode("bad".into()).is_transient());
    }
}
