//! Access on public hostnames against a real edge process: identity rules,
//! the sign-in redirect, grants checked at the callback, sessions, the
//! origin's signed assertion, and service tokens. Control's side is played
//! by a real HTTPS server publishing the key set of a signer the test
//! holds: the grants are the ones control would sign.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use base64::Engine as _;
use common::Stack;
use gatehouse_oidc::{Jwks, Signer, Token};
use gatehouse_testkit::access::{GrantSigner as Control, unix_now as now};
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "s3cret-of-the-ci-token";

use gatehouse_testkit::access::CurlResponse as Got;

async fn get(s: &Stack, host: &str, path: &str, args: &[&str]) -> Got {
    let out = s
        .curl()
        .args(["--path-as-is", "-D", "-"])
        .args(args)
        .arg(s.url(host, path))
        .output()
        .await
        .unwrap();
    gatehouse_testkit::access::parse_curl_response(&out.stdout)
}

async fn callback(s: &Stack, host: &str, grant: &str, nonce: &str) -> Got {
    let cookie = format!("__Host-gatehouse-access-nonce={nonce}");
    get(
        s,
        host,
        &format!("/.gatehouse/access/callback?grant={grant}"),
        &["-b", &cookie],
    )
    .await
}

/// Signs in on `host` as `email`: redirect, grant, callback; the session.
async fn sign_in(s: &Stack, c: &Control, host: &str, path: &str, email: &str) -> String {
    let r = get(s, host, path, &["-H", "Accept: text/html"]).await;
    assert_eq!(r.code, 302, "{}", r.body);
    let nonce = r.cookie("__Host-gatehouse-access-nonce").unwrap();
    let back = callback(s, host, &c.grant(host, email, &nonce, path), &nonce).await;
    assert_eq!(back.code, 302, "{}", back.body);
    assert_eq!(back.header("location"), Some(path));
    back.cookie("__Host-gatehouse-access").unwrap()
}

fn session(v: &str) -> String {
    format!("__Host-gatehouse-access={v}; other=kept")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_on_public_hostnames() {
    let mut s = Stack::new().await;
    let control = Control::new();
    let hash = hex_sha256(SECRET);
    s.edge_extra = format!(
        "access:\n  control: {}\n  ca: {}\n  session_lifetime: 2h\n  service_tokens:\n    - {{id: ci, secret_sha256: {hash}}}\n    - {{id: other, secret_sha256: {}}}\n",
        control.url,
        s.pki.ca.display(),
        hex_sha256("other-secret"),
    );
    s.misc_rules = "      - {path: /secure/*, action: allow, identity: {any: true}}\n".into();
    s.write_edge_cfg(
        "      - {path: /team/*, action: allow, identity: {emails: [alice@corp.test]}}\n      - {path: /bots/*, action: allow, identity: {service_tokens: [ci]}}\n",
    );
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    let result = tokio::time::timeout(Duration::from_secs(180), async {
        control_unreachable(&s, &control).await;
        control.serve_jwks(&s.pki).await;
        browsers_and_api_clients(&s, &control).await;
        refused_grants(&s, &control).await;
        other_hostnames(&s, &control).await;
        service_tokens(&s).await;
    })
    .await;
    if result.is_err() {
        s.dump();
        panic!("access checks timed out");
    }
    let key = s.path().join("access.key");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the edge's key is kept private");
}

fn hex_sha256(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Control's keys cannot be fetched: the sign-in fails closed, saying why.
async fn control_unreachable(s: &Stack, c: &Control) {
    let r = get(s, "app.test", "/team/x", &["-H", "Accept: text/html"]).await;
    let nonce = r.cookie("__Host-gatehouse-access-nonce").unwrap();
    let back = callback(
        s,
        "app.test",
        &c.grant("app.test", "alice@corp.test", &nonce, "/"),
        &nonce,
    )
    .await;
    assert_eq!(back.code, 502, "{}", back.body);
    assert!(
        back.body.contains("control&#39;s keys") || back.body.contains("control's keys"),
        "{}",
        back.body
    );
    assert!(back.cookie("__Host-gatehouse-access").is_none());
}

async fn browsers_and_api_clients(s: &Stack, c: &Control) {
    // A browser is sent to control with a nonce cookie; an API client gets 401.
    let r = get(
        s,
        "app.test",
        "/team/x?y=1",
        &["-H", "Accept: text/html,*/*"],
    )
    .await;
    assert_eq!(r.code, 302, "{}", r.body);
    let nonce = r.cookie("__Host-gatehouse-access-nonce").unwrap();
    assert!(nonce.len() >= 32, "{nonce}");
    let set = r.cookies().join("\n");
    for attr in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert_eq!(
        r.header("location").unwrap(),
        format!(
            "{}/access/login?host=app.test&nonce={nonce}&rd=%2Fteam%2Fx%3Fy%3D1",
            c.url
        )
    );
    let api = get(s, "app.test", "/team/x", &[]).await;
    assert_eq!(api.code, 401, "{}", api.body);
    let post = get(
        s,
        "app.test",
        "/team/x",
        &["-X", "POST", "-H", "Accept: text/html"],
    )
    .await;
    assert_eq!(post.code, 401, "a POST is not redirected");
    // An unprotected path needs nothing.
    assert_eq!(get(s, "app.test", "/who", &[]).await.code, 200);

    // The grant completes the sign-in; the origin gets the assertion, not the session.
    let back = callback(
        s,
        "app.test",
        &c.grant("app.test", "alice@corp.test", &nonce, "/team/x?y=1"),
        &nonce,
    )
    .await;
    assert_eq!(back.code, 302, "{}", back.body);
    assert_eq!(back.header("location"), Some("/team/x?y=1"));
    let sess = back.cookie("__Host-gatehouse-access").unwrap();
    let set = back.cookies().join("\n");
    assert!(
        set.contains("Max-Age=7200") && set.contains("HttpOnly") && set.contains("Secure"),
        "{set}"
    );
    assert_eq!(
        back.cookie("__Host-gatehouse-access-nonce").as_deref(),
        Some("")
    );
    let ok = get(s, "app.test", "/team/x?y=1", &["-b", &session(&sess)]).await;
    assert_eq!(ok.code, 200, "{}", ok.body);
    assert_eq!(ok.line("cookie"), Some("other=kept"), "{}", ok.body);
    let assertion = ok.line("access-assertion").unwrap();
    let certs = get(s, "app.test", "/.gatehouse/access/certs", &[]).await;
    assert_eq!(certs.code, 200);
    let keys = Jwks::parse(certs.body.as_bytes()).unwrap();
    let claims = Token::parse(assertion)
        .unwrap()
        .verify(&keys)
        .unwrap()
        .clone();
    assert_eq!(claims["email"], "alice@corp.test");
    assert_eq!(claims["aud"], "https://app.test");
    assert_eq!(claims["iss"], "https://app.test");
    assert_eq!(claims["groups"], json!(["staff"]));
    assert!(
        Token::parse(assertion)
            .unwrap()
            .verify(&c.signer.jwks().unwrap())
            .is_err()
    );
    // Clients' own assertions never reach the origin.
    let forged = get(
        s,
        "app.test",
        "/who",
        &["-H", "Gatehouse-Access-Jwt-Assertion: forged"],
    )
    .await;
    assert_eq!(forged.line("access-assertion"), Some(""));

    // Signed in but not admitted: 403.
    let bob = sign_in(s, c, "app.test", "/team/y", "bob@corp.test").await;
    let r = get(s, "app.test", "/team/y", &["-b", &session(&bob)]).await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert!(r.body.contains("bob@corp.test"), "{}", r.body);

    // Logout clears the session cookie.
    let out = get(
        s,
        "app.test",
        "/.gatehouse/access/logout",
        &["-b", &session(&sess)],
    )
    .await;
    assert_eq!(out.code, 200);
    assert_eq!(out.cookie("__Host-gatehouse-access").as_deref(), Some(""));
    assert!(out.cookies().join("").contains("Max-Age=0"));
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn refused_grants(s: &Stack, c: &Control) {
    let start = get(s, "app.test", "/team/x", &["-H", "Accept: text/html"]).await;
    let nonce = start.cookie("__Host-gatehouse-access-nonce").unwrap();
    let base = c.claims("app.test", "alice@corp.test", &nonce, "/team/x");
    let with = |k: &str, v: Value| {
        let mut m = base.clone();
        m.insert(k.into(), v);
        m.insert(
            "jti".into(),
            gatehouse_oidc::random_token(16).unwrap().into(),
        );
        c.signer.sign(&m).unwrap()
    };
    let forged = Signer::generate().unwrap().sign(&base).unwrap();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&Value::Object(base.clone()))
    );
    let none_sig = format!("{none}AAAA");
    let cases = [
        ("forged", forged),
        ("expired", with("exp", json!(now() - 200))),
        ("wrong aud", with("aud", json!("https://misc.test"))),
        ("wrong iss", with("iss", json!("https://evil.test"))),
        (
            "wrong nonce",
            with("nonce", json!("another-browsers-nonce")),
        ),
        ("alg none", none),
        ("alg none with a signature", none_sig),
        ("garbage", "%00%ff..".to_string()),
    ];
    for (what, grant) in cases {
        let r = callback(s, "app.test", &grant, &nonce).await;
        assert!(
            r.code == 403 || r.code == 400,
            "{what}: {} {}",
            r.code,
            r.body
        );
        assert!(r.cookie("__Host-gatehouse-access").is_none(), "{what}");
    }
    // A valid grant without the browser's nonce cookie.
    let good = c.grant("app.test", "alice@corp.test", &nonce, "/team/x");
    let r = get(
        s,
        "app.test",
        &format!("/.gatehouse/access/callback?grant={good}"),
        &[],
    )
    .await;
    assert_eq!(r.code, 403, "{}", r.body);
    // Used once, then replayed.
    assert_eq!(callback(s, "app.test", &good, &nonce).await.code, 302);
    let again = callback(s, "app.test", &good, &nonce).await;
    assert_eq!(again.code, 403, "{}", again.body);
    assert!(again.body.contains("already been used"), "{}", again.body);
    // `rd` elsewhere than a local path goes to `/`.
    for rd in [
        "//evil.test/x",
        "/\\evil.test/x",
        "https://evil.test/",
        "evil",
    ] {
        let r = callback(s, "app.test", &with("rd", json!(rd)), &nonce).await;
        assert_eq!(r.code, 302, "{rd}: {}", r.body);
        assert_eq!(r.header("location"), Some("/"), "{rd}");
    }
    // A forged session cookie is no session.
    let r = get(
        s,
        "app.test",
        "/team/x",
        &["-b", &session(&forged_session(c))],
    )
    .await;
    assert_eq!(r.code, 401);
    // Cookie and query garbage never hurts.
    for junk in [
        "__Host-gatehouse-access=",
        "__Host-gatehouse-access=a.b.c",
        "=;;=",
        "__Host-gatehouse-access=\"x",
    ] {
        let r = get(s, "app.test", "/team/x", &["-b", junk]).await;
        assert_eq!(r.code, 401, "{junk}");
    }
    let r = get(
        s,
        "app.test",
        "/.gatehouse/access/callback?grant",
        &["-b", "__Host-gatehouse-access-nonce=x"],
    )
    .await;
    assert_eq!(r.code, 400);
}

/// A session as the edge would write it, signed by another key.
fn forged_session(_c: &Control) -> String {
    let t = now();
    Signer::generate()
        .unwrap()
        .sign(
            json!({"iss": "https://app.test", "aud": "https://app.test", "sub": "alice@corp.test",
                "email": "alice@corp.test", "iat": t, "exp": t + 3600})
            .as_object()
            .unwrap(),
        )
        .unwrap()
}

/// A session of one hostname does not open another: neither when first
/// seen (verification) nor once verified on its own hostname (the cache).
async fn other_hostnames(s: &Stack, c: &Control) {
    let misc = sign_in(s, c, "misc.test", "/secure/a", "carol@corp.test").await;
    let app = sign_in(s, c, "app.test", "/team/z", "alice@corp.test").await;
    for _ in 0..2 {
        let r = get(s, "misc.test", "/secure/a", &["-b", &session(&app)]).await;
        assert_eq!(r.code, 401, "app.test's session on misc.test: {}", r.body);
        let r = get(s, "app.test", "/team/z", &["-b", &session(&misc)]).await;
        assert_eq!(r.code, 401, "misc.test's session on app.test");
        let r = get(s, "misc.test", "/secure/a", &["-b", &session(&misc)]).await;
        assert!(![401, 403].contains(&r.code), "{} {}", r.code, r.body);
        let r = get(s, "app.test", "/team/z", &["-b", &session(&app)]).await;
        assert_eq!(r.code, 200, "{}", r.body);
    }
}

async fn service_tokens(s: &Stack) {
    let id = |v: &str| format!("Gatehouse-Access-Client-Id: {v}");
    let secret = |v: &str| format!("Gatehouse-Access-Client-Secret: {v}");
    let ok = get(
        s,
        "app.test",
        "/bots/deploy",
        &["-H", &id("ci"), "-H", &secret(SECRET)],
    )
    .await;
    assert_eq!(ok.code, 200, "{}", ok.body);
    let assertion = ok.line("access-assertion").unwrap();
    let certs = get(s, "app.test", "/.gatehouse/access/certs", &[]).await;
    let keys = Jwks::parse(certs.body.as_bytes()).unwrap();
    let claims = Token::parse(assertion)
        .unwrap()
        .verify(&keys)
        .unwrap()
        .clone();
    assert_eq!(claims["service_token"], "ci");
    assert_eq!(claims["aud"], "https://app.test");
    for (what, args, want) in [
        ("wrong secret", [id("ci"), secret("nope")], 401),
        ("not listed", [id("nobody"), secret(SECRET)], 401),
        (
            "another token's secret",
            [id("ci"), secret("other-secret")],
            401,
        ),
        (
            "a token the rule does not name",
            [id("other"), secret("other-secret")],
            403,
        ),
    ] {
        let r = get(
            s,
            "app.test",
            "/bots/deploy",
            &["-H", &args[0], "-H", &args[1]],
        )
        .await;
        assert_eq!(r.code, want, "{what}: {}", r.body);
    }
    let r = get(
        s,
        "app.test",
        "/team/x",
        &["-H", &id("ci"), "-H", &secret(SECRET)],
    )
    .await;
    assert_eq!(r.code, 403, "a token on a people-only path");
}

/// A real control signing people in at `idp` for `app.test`, and an edge
/// and connector whose `/team/*` admits the provider's group `staff`.
async fn with_real_control(
    idp: &gatehouse_testkit::oidc_provider::OidcProvider,
) -> (gatehouse_testkit::TestControl, Stack) {
    let control = gatehouse_testkit::TestControl::start_signing_in(idp, |o| {
        o.access_hosts = vec!["app.test".into()];
    })
    .await;
    let mut s = Stack::new().await;
    s.edge_extra = format!(
        "access:\n  control: {}\n  ca: {}\n",
        control.info.url,
        control.dir.join("ca.crt").display()
    );
    s.write_edge_cfg("      - {path: /team/*, action: allow, identity: {groups: [staff]}}\n");
    s.start_edge().await;
    s.start_connector(0, "quic").await;
    (control, s)
}

/// The whole chain with the real parts: a browser (testkit's, redirects by
/// hand) is sent by a real edge to a real control, which signs the person
/// in at a real provider (Hydra) and hands the edge a grant; the origin
/// then sees who is asking, and a person outside the rule's group is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_through_real_control_and_provider() {
    use gatehouse_testkit::oidc_provider::{self, Browser, OidcProvider, Person};
    if oidc_provider::hydra_or_skip().is_none() {
        return;
    }
    let idp = OidcProvider::start().await;
    let (control, s) = with_real_control(&idp).await;
    let browser = Browser::new(&[idp.ca_file(), &control.dir.join("ca.crt")]);

    // Signs in as `person` from the edge's redirect to the session cookie.
    let sign_in = async |person: Person| -> Option<String> {
        idp.sign_in_as(person);
        let r = get(&s, "app.test", "/team/board", &["-H", "Accept: text/html"]).await;
        assert_eq!(r.code, 302, "{}", r.body);
        let login = r.header("location").unwrap().to_string();
        assert!(
            login.starts_with(&format!("{}/access/login?", control.info.url)),
            "{login}"
        );
        let nonce = r.cookie("__Host-gatehouse-access-nonce").unwrap();
        let f = browser
            .follow(&login, |u| u.as_str().starts_with("https://app.test/"))
            .await;
        let grant = f
            .param("grant")
            .unwrap_or_else(|| panic!("{} {}", f.status, f.body));
        let back = callback(&s, "app.test", &grant, &nonce).await;
        assert_eq!(back.code, 302, "{}", back.body);
        assert_eq!(back.header("location"), Some("/team/board"));
        back.cookie("__Host-gatehouse-access")
    };

    let staff = sign_in(Person::new("ida-1", "ida@corp.test").groups(&["staff"]))
        .await
        .unwrap();
    let ok = get(&s, "app.test", "/team/board", &["-b", &session(&staff)]).await;
    assert_eq!(ok.code, 200, "{}", ok.body);
    let assertion = ok.line("access-assertion").unwrap();
    let certs = get(&s, "app.test", "/.gatehouse/access/certs", &[]).await;
    let claims = Token::parse(assertion)
        .unwrap()
        .verify(&Jwks::parse(certs.body.as_bytes()).unwrap())
        .unwrap()
        .clone();
    assert_eq!(claims["email"], "ida@corp.test");
    assert_eq!(claims["groups"], json!(["staff"]));

    let other = sign_in(Person::new("jo-1", "jo@corp.test").groups(&["sales"]))
        .await
        .unwrap();
    let refused = get(&s, "app.test", "/team/board", &["-b", &session(&other)]).await;
    assert_eq!(refused.code, 403, "{}", refused.body);
    assert_eq!(refused.line("access-assertion"), None);
    // Nobody joined the mesh by signing in for Access.
    assert!(control.admin.nodes().await.unwrap().is_empty());
}

/// Access in a real browser: headless Chromium opens a protected page of
/// a public hostname (`app.test`, which the browser resolves to the edge
/// on loopback) and does the rest itself: the edge sends it to control,
/// control to Hydra's login and consent, and back through control to the
/// edge's callback with the grant, then to the page, where the origin sees
/// who signed in. The browser keeps the edge's cookies by its own rules
/// (the `__Host-` nonce cookie of the first redirect must come back to the
/// callback): a cookie it would refuse fails here, not in the tests whose
/// client passes cookies by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_in_chromium() {
    use gatehouse_testkit::chromium::{self, Chromium};
    use gatehouse_testkit::oidc_provider::{self, OidcProvider, Person};
    let began = std::time::Instant::now();
    if chromium::browser_or_skip().is_none() || oidc_provider::hydra_or_skip().is_none() {
        return;
    }
    let idp = OidcProvider::start().await;
    let (control, s) = with_real_control(&idp).await;
    idp.sign_in_as(Person::new("kim-1", "kim@corp.test").groups(&["staff"]));

    let edge = s.https.to_string();
    let browser = Chromium::start_with_hosts(
        &[idp.ca_file(), &control.dir.join("ca.crt"), &s.pki.ca],
        &[("app.test", &edge)],
    )
    .await;
    eprintln!("chromium started in {:?}", browser.started_in());
    let page = browser.new_page().await;
    let board = "https://app.test/team/board?x=1";
    page.navigate(board).await;
    let text = page.wait_for_text("origin=").await;
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_owned()
    };
    assert_eq!(page.url().await, board);
    assert_eq!(line("target"), "/team/board?x=1", "{text}");
    // The origin gets the edge's assertion naming the person, and never
    // the session cookie.
    let (code, certs) = s.get("app.test", "/.gatehouse/access/certs", &[]).await;
    assert_eq!(code, 200);
    let claims = Token::parse(&line("access-assertion"))
        .unwrap()
        .verify(&Jwks::parse(certs.as_bytes()).unwrap())
        .unwrap()
        .clone();
    assert_eq!(claims["email"], "kim@corp.test");
    assert_eq!(claims["groups"], json!(["staff"]));
    assert!(
        !line("cookie").contains("__Host-gatehouse-access"),
        "{text}"
    );

    // The browser went the whole way, in order.
    let (c, issuer, app) = (&control.info.url, idp.issuer(), idp.app_url());
    let steps = [
        format!("GET {board}"),
        format!("GET {c}/access/login?host=app.test&"),
        format!("GET {issuer}/oauth2/auth?"),
        format!("GET {app}/login?login_challenge="),
        format!("GET {app}/consent?consent_challenge="),
        format!("GET {c}/oidc/callback?"),
        "GET https://app.test/.gatehouse/access/callback?grant=".to_string(),
        format!("GET {board}"),
    ];
    page.assert_documents_in_order(&steps);
    // Nobody joined the mesh by signing in for Access.
    assert!(control.admin.nodes().await.unwrap().is_empty());
    eprintln!("Access through chromium in {:?}", began.elapsed());
}
