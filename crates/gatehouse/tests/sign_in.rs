//! Joining without a pre-auth key: `gatehouse node up` (a real process)
//! prints the URL where it is approved and waits; an administrator's
//! `gatehouse admin nodes approve` lets it in, or the person who signs in
//! on that page through a real OpenID provider (Ory Hydra, from testkit's
//! `oidc_provider`, over HTTPS) does. The browser is testkit's: cookies
//! kept, every redirect followed by hand; and once a real one, headless
//! Chromium (testkit's `chromium`), clicking the page's button and
//! following the provider's pages itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_control::signin::OidcConfig;
use gatehouse_testkit::TestControl;
use gatehouse_testkit::chromium::{self, Chromium};
use gatehouse_testkit::node_up::NodeUp;
use gatehouse_testkit::oidc_provider::{self, Browser, OidcProvider, Person, form_field};
use gatehouse_testkit::tailscale::{self, Options, Tailscaled};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);

/// `gatehouse node up` without a key for `c`: the process and its URL.
async fn node_up_without_key(c: &TestControl, host: &str, state: &std::path::Path) -> NodeUp {
    NodeUp::keyless(BIN, &c.info.join, &c.info.url, host, state).await
}

async fn admin(c: &TestControl, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["admin", "--state"])
        .arg(&c.dir)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_key_waits_and_joins_once_approved() {
    let c = TestControl::start().await;
    c.admin.create_user("dora@example.com").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = node_up_without_key(&c, "doras-laptop", tmp.path()).await;
    let code = w.url.rsplit('/').next().unwrap().to_string();

    // Waiting: listed with its host name, registered nowhere.
    let pending = admin(&c, &["nodes", "pending"]).await;
    let listed = String::from_utf8_lossy(&pending.stdout);
    assert!(
        listed.contains(&code) && listed.contains("doras-laptop"),
        "{listed}"
    );
    assert!(c.admin.nodes().await.unwrap().is_empty());

    // A page names the device; approval by an unknown user changes nothing.
    let refused = admin(
        &c,
        &["nodes", "approve", &code, "--user", "nobody@example.com"],
    )
    .await;
    assert!(!refused.status.success());
    assert!(c.admin.nodes().await.unwrap().is_empty());

    let ok = admin(
        &c,
        &["nodes", "approve", &code, "--user", "dora@example.com"],
    )
    .await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    w.ready().await;
    let nodes = c.admin.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node.name, "doras-laptop");
    assert_eq!(nodes[0].node.user.as_deref(), Some("dora@example.com"));
    // The code is spent: it is no longer pending and cannot be approved again.
    let again = admin(
        &c,
        &["nodes", "approve", &code, "--user", "dora@example.com"],
    )
    .await;
    assert!(!again.status.success());
    let listed = admin(&c, &["nodes", "pending"]).await;
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&code));

    // Restarted, the node uses its saved identity and asks for nothing.
    w.child.kill().await.unwrap();
    let mut child = Command::new(BIN)
        .args([
            "node",
            "up",
            "--socks5",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
        ])
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(tmp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(l)) = out.next_line().await {
            if l == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)));
    assert_eq!(c.admin.nodes().await.unwrap().len(), 1);
}

/// Control (in process) signing people in through a fresh Hydra.
struct Net {
    c: TestControl,
    idp: OidcProvider,
}

async fn net(configure: impl FnOnce(&mut OidcConfig)) -> Option<Net> {
    oidc_provider::hydra_or_skip()?;
    let idp = OidcProvider::start().await;
    let c = TestControl::start_signing_in(&idp, configure).await;
    Some(Net { c, idp })
}

impl Net {
    fn browser(&self) -> Browser {
        Browser::new(&[self.idp.ca_file(), &self.c.dir.join("ca.crt")])
    }

    async fn nodes(&self) -> Vec<(String, Option<String>)> {
        self.c
            .admin
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.node.name, n.node.user))
            .collect()
    }
}

async fn get(b: &Browser, url: &str) -> (u16, String) {
    let r = b.client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_and_their_node_joins_as_them() {
    let Some(n) = net(|_| {}).await else { return };
    n.idp
        .sign_in_as(Person::new("erin-1", "Erin@Example.com").name("Erin"));
    let tmp = tempfile::tempdir().unwrap();
    let mut w = node_up_without_key(&n.c, "erins-laptop", tmp.path()).await;
    let b = n.browser();
    let (status, page) = get(&b, &w.url).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("erins-laptop") && page.contains("Sign in"),
        "{page}"
    );
    let callback = b.device_sign_in_until_callback(&w.url, &n.c.info.url).await;
    let (status, done) = get(&b, &callback).await;
    assert_eq!(status, 200, "{done}");
    assert!(
        done.contains("erin@example.com") && done.contains("erins-laptop"),
        "{done}"
    );
    w.ready().await;
    assert_eq!(
        n.nodes().await,
        [(
            "erins-laptop".to_string(),
            Some("erin@example.com".to_string())
        )]
    );
    // The user was made by the sign-in, and the audit log says who did it.
    let users = n.c.admin.users().await.unwrap();
    assert!(users.iter().any(|u| u.login == "erin@example.com"));
    // The callback cannot be used again, here or anywhere.
    let (status, again) = get(&b, &callback).await;
    assert_eq!(status, 400, "{again}");
    assert!(again.contains("already finished"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailscale_client_joins_through_a_sign_in() {
    let Some(_) = tailscale::tools_or_skip() else {
        return;
    };
    let Some(n) = net(|o| o.allowed_domains = vec!["example.com".into()]).await else {
        return;
    };
    n.idp.sign_in_as(Person::new("finn-1", "finn@example.com"));
    let phone = Tailscaled::start(Options {
        hostname: "finns-phone".into(),
        ca_file: Some(n.c.dir.join("ca.crt")),
        ..Options::default()
    })
    .await;
    let login = phone.up_interactive(&n.c.info.url, &[]).await.unwrap();
    let b = n.browser();
    let callback = b
        .device_sign_in_until_callback(&login.auth_url, &n.c.info.url)
        .await;
    let (status, done) = get(&b, &callback).await;
    assert_eq!(status, 200, "{done}");
    let finished = login.wait(DEADLINE).await;
    assert!(finished.success(), "{finished:?}");
    let st = phone.wait_state("Running", DEADLINE).await;
    assert_eq!(
        st["Self"]["DNSName"],
        "finns-phone.test.gatehouse.internal."
    );
    assert_eq!(
        n.nodes().await,
        [(
            "finns-phone".to_string(),
            Some("finn@example.com".to_string())
        )]
    );
}

/// The sign-in in a real browser: headless Chromium opens the page `node
/// up` printed, a mouse click on its button submits the form, and the
/// browser goes through the provider's login and consent pages and back to
/// control on its own: its cookies, its redirects, its content security
/// policy checks, its TLS verification against the two test CAs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_in_chromium_and_their_node_joins() {
    let began = Instant::now();
    let Some(_) = chromium::browser_or_skip() else {
        return;
    };
    let Some(n) = net(|_| {}).await else { return };
    n.idp
        .sign_in_as(Person::new("gina-1", "Gina@Example.com").name("Gina"));
    let tmp = tempfile::tempdir().unwrap();
    let mut w = node_up_without_key(&n.c, "ginas-laptop", tmp.path()).await;

    let browser = Chromium::start(&[n.idp.ca_file(), &n.c.dir.join("ca.crt")]).await;
    eprintln!("chromium started in {:?}", browser.started_in());
    let page = browser.new_page().await;
    page.navigate(&w.url).await;
    let text = page.text().await;
    assert!(
        text.contains("ginas-laptop") && text.contains("Sign in"),
        "{text}"
    );
    assert!(n.nodes().await.is_empty());

    page.click(&format!(
        "form[action='{}/sign-in'] button[type=submit]",
        w.url.strip_prefix(&n.c.info.url).unwrap()
    ))
    .await;
    let callback = format!("{}/oidc/callback", n.c.info.url);
    page.wait_for_url(&callback).await;
    let done = page.wait_for_text("device added").await;
    assert!(
        done.contains("ginas-laptop joined") && done.contains("as gina@example.com"),
        "{done}"
    );

    // The browser went the whole way: the form, the provider, its login
    // and consent pages, the provider again, control's callback.
    let issuer = n.idp.issuer();
    let app = n.idp.app_url();
    let steps = [
        format!("POST {}/sign-in", w.url),
        format!("GET {issuer}/oauth2/auth?"),
        format!("GET {app}/login?login_challenge="),
        format!("GET {issuer}/oauth2/auth?"),
        format!("GET {app}/consent?consent_challenge="),
        format!("GET {issuer}/oauth2/auth?"),
        format!("GET {callback}?"),
    ];
    page.assert_documents_in_order(&steps);

    w.ready().await;
    assert_eq!(
        n.nodes().await,
        [(
            "ginas-laptop".to_string(),
            Some("gina@example.com".to_string())
        )]
    );
    eprintln!("signed in through chromium in {:?}", began.elapsed());
}

/// Each way a sign-in can go wrong approves nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_that_must_not_approve_anything() {
    let Some(mut n) = net(|o| {
        o.allowed_domains = vec!["example.com".into()];
        o.allowed_users = vec!["guest@partner.example".into()];
    })
    .await
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = node_up_without_key(&n.c, "target", tmp.path()).await;
    let url = w.url.clone();

    // A form posted without the page's cookie (a cross-site form): refused
    // before anything else.
    let stranger = n.browser();
    let r = stranger
        .client()
        .post(format!("{url}/sign-in"))
        .form(&[("csrf", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not started from the device")
    );

    // An address the provider has not verified; a domain not allowed.
    for (person, why) in [
        (
            Person::new("u-1", "una@example.com").unverified(),
            "has not verified",
        ),
        (
            Person::new("m-1", "mallory@elsewhere.example"),
            "may not join",
        ),
        (Person::new("n-1", "x").without_email(), "no email claim"),
    ] {
        n.idp.sign_in_as(person);
        let b = n.browser();
        let cb = b.device_sign_in_until_callback(&url, &n.c.info.url).await;
        let (status, page) = get(&b, &cb).await;
        assert_eq!(status, 403, "{page}");
        assert!(
            page.contains(why) && page.contains("Nothing was approved"),
            "{why}: {page}"
        );
    }
    // The provider refuses the person: its error is shown.
    n.idp.refuse_login("account locked");
    let b = n.browser();
    let cb = b.device_sign_in_until_callback(&url, &n.c.info.url).await;
    let (status, page) = get(&b, &cb).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("did not sign you in"), "{page}");

    // A sign-in finished in another browser than the one that started it.
    n.idp
        .sign_in_as(Person::new("g-1", "guest@partner.example"));
    let a = n.browser();
    let cb = a.device_sign_in_until_callback(&url, &n.c.info.url).await;
    let (status, page) = get(&n.browser(), &cb).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("another browser"), "{page}");
    // ... and that flow is spent for its own browser too.
    assert_eq!(get(&a, &cb).await.0, 400);

    // A code already redeemed, replayed under a new flow's state.
    let first = n.browser();
    let cb1 = first
        .device_sign_in_until_callback(&url, &n.c.info.url)
        .await;
    let tmp2 = tempfile::tempdir().unwrap();
    let w2 = node_up_without_key(&n.c, "other", tmp2.path()).await;
    let other_url = w2.url.clone();
    let second = n.browser();
    let cb2 = second
        .device_sign_in_until_callback(&other_url, &n.c.info.url)
        .await;
    let (status, page) = get(&first, &cb1).await;
    assert_eq!(status, 200, "{page}");
    let code1 = reqwest::Url::parse(&cb1)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let mut swapped = reqwest::Url::parse(&cb2).unwrap();
    let state2 = swapped
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    swapped
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code1)
        .append_pair("state", &state2);
    let (status, page) = get(&second, swapped.as_str()).await;
    assert_eq!(status, 502, "{page}");
    assert!(page.contains("could not be exchanged"), "{page}");
    assert_eq!(
        n.nodes().await,
        [(
            "target".to_string(),
            Some("guest@partner.example".to_string())
        )],
        "only the one good sign-in registered a node"
    );

    // The provider down: the page says so; the administrator still can.
    n.idp.stop();
    let tmp3 = tempfile::tempdir().unwrap();
    let w3 = node_up_without_key(&n.c, "while-down", tmp3.path()).await;
    let b = n.browser();
    let r = b.press_device_sign_in(&w3.url).await;
    // Discovery was cached while the provider was up: the sign-in starts,
    // and the provider is unreachable for the browser.
    assert_eq!(r.status(), 303);
    let code = w3.url.rsplit('/').next().unwrap().to_string();
    n.c.admin.create_user("ops@example.com").await.unwrap();
    let ok = admin(
        &n.c,
        &["nodes", "approve", &code, "--user", "ops@example.com"],
    )
    .await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    drop((w, w2));
}

/// A provider control cannot use (down from the start, or another issuer
/// than configured) approves nothing, and the page says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_control_cannot_use_approves_nothing() {
    let Some(n) = net(|o| o.issuer.push('/')).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = node_up_without_key(&n.c, "box", tmp.path()).await;
    let b = n.browser();
    let r = b.press_device_sign_in(&w.url).await;
    assert_eq!(r.status(), 502);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("cannot be used") && page.contains("issuer"),
        "{page}"
    );
    let Some(down) = net(|_| {}).await else {
        return;
    };
    let mut idp = down.idp;
    idp.stop();
    let w2 = node_up_without_key(&down.c, "box2", tmp.path().join("2").as_path()).await;
    let b = Browser::new(&[idp.ca_file(), &down.c.dir.join("ca.crt")]);
    let page = b
        .client()
        .get(&w2.url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let r = b
        .client()
        .post(format!("{}/sign-in", w2.url))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("cannot be used") && page.contains("Nothing was approved"),
        "{page}"
    );
    assert!(down.c.admin.nodes().await.unwrap().is_empty());
    assert!(n.c.admin.nodes().await.unwrap().is_empty());
}

/// Access on public hostnames, control's half: `/access/login` signs the
/// person in and sends the browser to the edge's callback with a grant
/// signed by control's access key (checked here against `/access/jwks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_grants_access_sign_ins_only_for_its_hosts() {
    use gatehouse_oidc::idtoken::{self, Expect};
    let Some(n) = net(|o| {
        o.access_hosts = vec!["*.apps.example.test".into()];
        // Joining is restricted; Access sign-ins are judged by the edge.
        o.allowed_domains = vec!["example.com".into()];
    })
    .await
    else {
        return;
    };
    n.idp.sign_in_as(
        Person::new("h-1", "hana@partner.example")
            .groups(&["eng", "ops"])
            .name("Hana"),
    );
    let b = n.browser();
    let nonce = "n0nce-0123456789abcdef";
    let host = "grafana.apps.example.test:8443";
    let login = |host: &str, rd: &str| {
        let mut u = reqwest::Url::parse(&format!("{}/access/login", n.c.info.url)).unwrap();
        u.query_pairs_mut()
            .append_pair("host", host)
            .append_pair("nonce", nonce)
            .append_pair("rd", rd);
        u.to_string()
    };
    let edge = "https://grafana.apps.example.test:8443/.gatehouse/access/callback";
    let f = b
        .follow(&login(host, "/d/home?x=1"), |u| {
            u.as_str().starts_with(edge)
        })
        .await;
    let grant = f
        .param("grant")
        .unwrap_or_else(|| panic!("{} {}", f.status, f.body));

    let jwks = b
        .client()
        .get(format!("{}/access/jwks", n.c.info.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let keys = gatehouse_oidc::Jwks::parse(&jwks).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = gatehouse_oidc::Token::parse(&grant).unwrap();
    let c = idtoken::verify(
        &token,
        &keys,
        &Expect {
            issuer: &n.c.info.url,
            client_id: "https://grafana.apps.example.test:8443",
            nonce: Some(nonce),
            now,
            leeway: 60,
        },
    )
    .unwrap();
    assert_eq!(c.sub, "hana@partner.example");
    assert_eq!(c.strings("groups"), ["eng", "ops"]);
    assert_eq!(c.string("name"), Some("Hana"));
    assert_eq!(c.string("rd"), Some("/d/home?x=1"));
    assert!(c.exp - now <= 120);

    // Another site's redirect target is replaced by "/".
    let f = b
        .follow(&login(host, "//evil.example/x"), |u| {
            u.as_str().starts_with(edge)
        })
        .await;
    let t = gatehouse_oidc::Token::parse(&f.param("grant").unwrap()).unwrap();
    assert_eq!(t.unverified_claims()["rd"], "/");

    // A host outside --access-hosts, a missing nonce: refused, no grant.
    for (url, status) in [
        (login("evil.example", "/"), 403),
        (login("apps.example.test", "/"), 403),
        (
            format!(
                "{}/access/login?host=grafana.apps.example.test",
                n.c.info.url
            ),
            400,
        ),
    ] {
        let r = b.client().get(&url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{url}");
    }
    // Nothing joined the mesh through these sign-ins.
    assert!(n.nodes().await.is_empty());
}
