//! Interactive registration, for devices that cannot take a pre-auth key
//! (phones): the client is given an `AuthURL` (`/register/<code>` on
//! control), waits on it with follow-up requests, and joins once an
//! administrator approves the code (`gatehouse admin nodes approve CODE
//! --user LOGIN`). The page at the URL says what the device is and how it
//! gets approved; a sign-in provider can later approve from the same page.
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
/// Most registrations waiting at once (each costs a little memory; a flood
/// of key-less registrations must not grow control without bound).
const MAX_WAITING: usize = 1024;

/// What became of a waiting registration.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// Approved: the node as stored.
    Approved(Box<NodeRow>),
}

/// A device waiting for approval.
#[derive(Debug)]
struct Waiting {
    credential: String,
    wg_key: String,
    hostname: String,
    client: ClientInfo,
    since: Instant,
    verdict: watch::Sender<Option<Verdict>>,
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

    /// The code of the machine's waiting registration, made if it has none.
    pub fn code_for(
        &self,
        credential: &str,
        wg_key: &str,
        hostname: &str,
        client: ClientInfo,
    ) -> Result<String, ApiErr> {
        let mut map = self.lock();
        map.retain(|_, w| w.since.elapsed() < CODE_LIFETIME);
        if let Some((code, w)) = map.iter_mut().find(|(_, w)| w.credential == credential) {
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
        let code = crate::secret::random_hex(12);
        map.insert(
            code.clone(),
            Waiting {
                credential: credential.to_string(),
                wg_key: wg_key.to_string(),
                hostname: hostname.to_string(),
                client,
                since: Instant::now(),
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
                .filter(|w| w.credential == credential)
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
            .filter(|(_, w)| w.since.elapsed() < CODE_LIFETIME)
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
    let (credential, wg_key, hostname, client) = {
        let map = app.pending.lock();
        let w = map
            .get(code)
            .filter(|w| w.since.elapsed() < CODE_LIFETIME)
            .ok_or_else(|| ApiErr::not_found(format!("no device waits under code {code}")))?;
        (
            w.credential.clone(),
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
        credential: Credential::MachineKey(credential),
        client,
    };
    let Admitted { row, .. } = admission::register(app, candidate).await?;
    if let Some(w) = app.pending.lock().remove(code) {
        w.verdict
            .send_replace(Some(Verdict::Approved(Box::new(row.clone()))));
    }
    Ok(row)
}

/// The page behind an `AuthURL`: what the device is and how it gets in.
pub(crate) async fn page(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<App>>,
    axum::extract::Path(code): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(d) = app.pending.get(&code) else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::response::Html(
                "<!doctype html><title>Gatehouse</title><p>No device is waiting under this code (it expires after 30 minutes). Start the sign-in on the device again.</p>".to_string(),
            ),
        )
            .into_response();
    };
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    axum::response::Html(format!(
        "<!doctype html><meta charset=utf-8><title>Gatehouse: approve a device</title>\
         <h1>A device asks to join {network}</h1>\
         <p>Host name <b>{host}</b>, {os} {version}.</p>\
         <p>An administrator lets it in for a person with:</p>\
         <pre>gatehouse admin nodes approve {code} --user LOGIN</pre>\
         <p>The device joins as soon as that is done; this page is then no longer needed.</p>",
        network = esc(&app.config.domain()),
        host = esc(&d.hostname),
        os = esc(&d.os),
        version = esc(&d.version),
        code = esc(&d.code),
    ))
    .into_response()
}
