//! Interactive registration, for devices that cannot take a pre-auth key
//! (phones, `gatehouse node up` without `--authkey`), whatever protocol
//! they speak: the device is given a URL (`/register/<code>` on control),
//! waits on it, and joins once the code is approved, by an administrator
//! (`gatehouse admin nodes approve CODE --user LOGIN`) or by the person who
//! signs in on that page through the network's identity provider
//! (`crate::signin`).
//!
//! Waiting registrations live in memory only: after a restart of control,
//! clients ask again and get a new code.

use crate::App;
use crate::admission::{self, Admitted, Authority, Candidate, Credential};
use crate::error::ApiErr;
use crate::store::{ClientInfo, NodeRow};
use gatehouse_proto::control::PendingDevice;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a code stays valid.
const CODE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How long an approval stays to be picked up by the device that waited
/// for it (it may be between two waiting requests when it is approved).
const APPROVED_LIFETIME: Duration = Duration::from_secs(120);
/// Most registrations waiting at once (each costs a little memory; a flood
/// of key-less registrations must not grow control without bound).
const MAX_WAITING: usize = 1024;
/// Most registrations waiting at once from one source (an IPv4 address or
/// an IPv6 /64), so that one flooding host cannot take every slot; room
/// for an office behind one NAT enrolling its devices.
const MAX_WAITING_PER_SOURCE: usize = 64;

/// The source a waiting registration is counted under: the IPv4 address,
/// or the /64 of an IPv6 one (a host usually holds a whole /64).
fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(_) => ip,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What became of a waiting registration.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// Approved: the node as stored (and, for the native protocol, its
    /// machine certificate).
    Approved(Box<Admitted>),
}

/// How a waiting device will prove who it is once admitted.
#[derive(Debug, Clone)]
pub(crate) enum Proof {
    /// Its Noise machine key (Tailscale's protocol), as `mkey:<hex>`.
    MachineKey(String),
    /// The CSRs of its machine and serving certificates (the native
    /// protocol).
    Certificates {
        /// PEM CSR of the machine certificate.
        machine_csr: String,
        /// PEM CSR of the serving certificate.
        serving_csr: String,
    },
}

impl Proof {
    /// What identifies the waiting machine when it asks again: its machine
    /// key, or the hash of its machine CSR.
    pub fn id(&self) -> String {
        use sha2::Digest as _;
        match self {
            Proof::MachineKey(k) => k.clone(),
            Proof::Certificates { machine_csr, .. } => {
                format!(
                    "csr:{}",
                    hex::encode(sha2::Sha256::digest(machine_csr.as_bytes()))
                )
            }
        }
    }
}

/// A device waiting for approval.
#[derive(Debug)]
struct Waiting {
    credential: String,
    source: std::net::IpAddr,
    proof: Proof,
    wg_key: String,
    hostname: String,
    client: ClientInfo,
    since: Instant,
    approved: Option<Instant>,
    verdict: watch::Sender<Option<Verdict>>,
}

impl Waiting {
    fn live(&self) -> bool {
        self.since.elapsed() < CODE_LIFETIME
            && self
                .approved
                .is_none_or(|at| at.elapsed() < APPROVED_LIFETIME)
    }
}

/// The registrations waiting for approval.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    by_code: Mutex<BTreeMap<String, Waiting>>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Waiting>> {
        self.by_code
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The code of the machine's waiting registration, made if it has none;
    /// `from` is the address the request came from.
    pub fn code_for(
        &self,
        proof: Proof,
        wg_key: &str,
        hostname: &str,
        client: ClientInfo,
        from: std::net::IpAddr,
    ) -> Result<String, ApiErr> {
        let credential = proof.id();
        let mut map = self.lock();
        map.retain(|_, w| w.live());
        if let Some((code, w)) = map.iter_mut().find(|(_, w)| w.credential == credential) {
            if w.approved.is_some() {
                // Approved: the device picks its verdict up under this code.
                return Ok(code.clone());
            }
            // The same machine asking again (perhaps with a new node key).
            w.wg_key = wg_key.to_string();
            w.hostname = hostname.to_string();
            w.client = client;
            return Ok(code.clone());
        }
        if map.len() >= MAX_WAITING {
            return Err(ApiErr::conflict(
                "too many devices are waiting for approval; try again later",
            ));
        }
        let source = source_of(from);
        if map.values().filter(|w| w.source == source).count() >= MAX_WAITING_PER_SOURCE {
            return Err(ApiErr::conflict(
                "too many devices from this address are waiting for approval; try again later",
            ));
        }
        let code = crate::secret::random_hex(12);
        map.insert(
            code.clone(),
            Waiting {
                credential,
                source,
                proof,
                wg_key: wg_key.to_string(),
                hostname: hostname.to_string(),
                client,
                since: Instant::now(),
                approved: None,
                verdict: watch::Sender::new(None),
            },
        );
        Ok(code)
    }

    /// Waits for the verdict on `code`, asked by the machine `credential`.
    pub async fn wait(
        &self,
        code: &str,
        credential: &str,
        within: Duration,
    ) -> Result<Option<Verdict>, ApiErr> {
        let mut rx = {
            let map = self.lock();
            let w = map
                .get(code)
                .filter(|w| w.credential == credential && w.live())
                .ok_or_else(|| ApiErr::unauthorized("no such registration waiting"))?;
            w.verdict.subscribe()
        };
        let got = tokio::time::timeout(within, rx.wait_for(Option::is_some)).await;
        Ok(match got {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        })
    }

    /// Devices waiting now.
    pub fn list(&self) -> Vec<PendingDevice> {
        let map = self.lock();
        let mut v: Vec<PendingDevice> = map
            .iter()
            .filter(|(_, w)| w.live() && w.approved.is_none())
            .map(|(code, w)| PendingDevice {
                code: code.clone(),
                hostname: w.hostname.clone(),
                os: w.client.os.clone(),
                version: w.client.version.clone(),
                waiting_seconds: w.since.elapsed().as_secs(),
            })
            .collect();
        v.sort_by_key(|d| std::cmp::Reverse(d.waiting_seconds));
        v
    }

    /// The device waiting under `code`, if any.
    pub fn get(&self, code: &str) -> Option<PendingDevice> {
        self.list().into_iter().find(|d| d.code == code)
    }
}

/// Approves the device waiting under `code` for `user`: it is registered
/// (audited as `actor`'s act) and its waiting client is told.
pub(crate) async fn approve(
    app: &App,
    code: &str,
    user: &str,
    actor: &str,
) -> Result<NodeRow, ApiErr> {
    let (proof, wg_key, hostname, client) = {
        let map = app.pending.lock();
        let w = map
            .get(code)
            .filter(|w| w.live() && w.approved.is_none())
            .ok_or_else(|| ApiErr::not_found(format!("no device waits under code {code}")))?;
        (
            w.proof.clone(),
            w.wg_key.clone(),
            w.hostname.clone(),
            w.client.clone(),
        )
    };
    let candidate = Candidate {
        authority: Authority::Approval {
            actor: actor.to_string(),
            user: user.to_string(),
        },
        hostname: &hostname,
        shared_name: false,
        wg_key: &wg_key,
        credential: match &proof {
            Proof::MachineKey(k) => Credential::MachineKey(k.clone()),
            Proof::Certificates {
                machine_csr,
                serving_csr,
            } => Credential::Certificates {
                machine_csr,
                serving_csr,
            },
        },
        client,
    };
    let admitted = admission::register(app, candidate).await?;
    let row = admitted.row.clone();
    if let Some(w) = app.pending.lock().get_mut(code) {
        w.approved = Some(Instant::now());
        w.verdict
            .send_replace(Some(Verdict::Approved(Box::new(admitted))));
    }
    Ok(row)
}

/// The page behind an `AuthURL`: what the device is and how it gets in
/// (signing in, when the network has an identity provider, or an
/// administrator's approval).
pub(crate) async fn page(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<App>>,
    axum::extract::Path(code): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use crate::pages::{esc, page};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let Some(d) = app.pending.get(&code) else {
        return page(
            StatusCode::NOT_FOUND,
            "no such device",
            "<p>No device is waiting under this code (it expires after 30 minutes). Start the sign-in on the device again.</p>",
        );
    };
    let sign_in = crate::signin::device_form(&app, &headers, &d.code);
    let body = format!(
        "<p>A device asks to join <b>{network}</b>: host name <b>{host}</b>, {os} {version}.</p>\
         {form}\
         <p>An administrator can let it in for a person with:</p>\
         <pre>gatehouse admin nodes approve {code} --user LOGIN</pre>\
         <p>The device joins as soon as that is done; this page is then no longer needed.</p>",
        network = esc(&app.config.domain()),
        host = esc(&d.hostname),
        os = esc(&d.os),
        version = esc(&d.version),
        code = esc(&d.code),
        form = sign_in.as_ref().map_or("", |(_, f)| f.as_str()),
    );
    let mut resp = page(StatusCode::OK, "approve a device", &body);
    if let Some((Some(cookie), _)) = sign_in
        && let Ok(v) = axum::http::HeaderValue::from_str(&cookie)
    {
        resp.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    resp.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ClientKind;

    fn proof(i: usize) -> Proof {
        Proof::MachineKey(format!("mkey:{i:064x}"))
    }

    fn client() -> ClientInfo {
        ClientInfo {
            kind: ClientKind::Gatehouse,
            os: "linux".into(),
            version: "test".into(),
        }
    }

    /// One source fills its share of the waiting slots and no more; the
    /// same machine asking again takes no new slot; other sources (another
    /// address, another /64) still get codes; a v4-mapped address counts
    /// as its v4 address.
    #[test]
    fn one_source_cannot_take_every_waiting_slot() {
        let p = Pending::default();
        let a: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        for i in 0..MAX_WAITING_PER_SOURCE {
            p.code_for(proof(i), "k", "h", client(), a).unwrap();
        }
        let again = p.code_for(proof(0), "k2", "h", client(), a);
        assert!(again.is_ok(), "{again:?}");
        let e = p
            .code_for(proof(10_000), "k", "h", client(), a)
            .unwrap_err();
        assert!(format!("{e:?}").contains("from this address"), "{e:?}");
        let mapped: std::net::IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(
            p.code_for(proof(10_001), "k", "h", client(), mapped)
                .is_err()
        );
        let b: std::net::IpAddr = "198.51.100.8".parse().unwrap();
        p.code_for(proof(10_002), "k", "h", client(), b).unwrap();
        let v6 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for i in 0..MAX_WAITING_PER_SOURCE {
            // Different hosts of one /64 share its count.
            let ip = v6(&format!("2001:db8:1:2::{:x}", i + 1));
            p.code_for(proof(20_000 + i), "k", "h", client(), ip)
                .unwrap();
        }
        assert!(
            p.code_for(
                proof(30_000),
                "k",
                "h",
                client(),
                v6("2001:db8:1:2:ffff::1")
            )
            .is_err()
        );
        p.code_for(proof(30_001), "k", "h", client(), v6("2001:db8:1:3::1"))
            .unwrap();
        assert_eq!(p.list().len(), 2 * MAX_WAITING_PER_SOURCE + 2);
    }
}
