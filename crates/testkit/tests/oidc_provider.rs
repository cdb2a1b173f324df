//! The OpenID provider harness against itself: a real Ory Hydra, its login
//! and consent app, and a browser following redirects by hand, driven
//! through the authorization-code flow with PKCE as a relying party would
//! (Gatehouse's control and edge sign people in the same way). The ID
//! token's signature is checked against the provider's published keys.
//!
//! Skipped (loudly) when `hydra` is not installed, unless
//! `GATEHOUSE_REQUIRE_OIDC` is set, as `scripts/test` sets it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gatehouse_testkit::oidc_provider::{
    self, Browser, Client, ClientSpec, Discovery, Event, OidcProvider, Options, Person,
};
use gatehouse_testkit::pki::Pki;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The relying party's redirect URI: the browser is stopped there, so
/// nothing needs to serve it.
const REDIRECT: &str = "https://127.0.0.1:9/oidc/callback";
/// Where the relying party asks to be sent after a logout.
const LOGGED_OUT: &str = "https://127.0.0.1:9/logged-out";

fn random() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

/// One sign-in as a relying party starts it.
struct Attempt {
    url: String,
    state: String,
    nonce: String,
    verifier: String,
}

/// An authorization request with PKCE (S256), state and nonce.
async fn attempt(idp: &OidcProvider, client_id: &str, scope: &str, pkce: bool) -> Attempt {
    let d = discovery(idp).await;
    let (state, nonce, verifier) = (random(), random(), random());
    let mut url = Url::parse(&d.authorization_endpoint).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce);
    if pkce {
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        url.query_pairs_mut()
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
    }
    Attempt {
        url: url.to_string(),
        state,
        nonce,
        verifier,
    }
}

async fn discovery(idp: &OidcProvider) -> Discovery {
    let r = Browser::new(&[idp.ca_file()])
        .client()
        .get(idp.discovery_url())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Follows the attempt from the authorization endpoint to the redirect URI.
async fn to_redirect_uri(browser: &Browser, a: &Attempt) -> oidc_provider::Followed {
    let f = browser
        .follow(&a.url, |u| u.as_str().starts_with(REDIRECT))
        .await;
    assert!(
        f.stopped_at.is_some(),
        "never sent back to {REDIRECT}: {} {} after {:?}",
        f.status,
        f.body,
        f.visited
    );
    assert_eq!(f.param("state").as_deref(), Some(a.state.as_str()));
    f
}

/// Redeems `code` at the token endpoint (client_secret_basic, or only the
/// client id for a public client).
async fn redeem(
    idp: &OidcProvider,
    client: &Client,
    code: &str,
    verifier: &str,
) -> (StatusCode, Value) {
    let d = discovery(idp).await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    let browser = Browser::new(&[idp.ca_file()]);
    let mut r = browser.client().post(&d.token_endpoint);
    match &client.secret {
        Some(secret) => r = r.basic_auth(&client.id, Some(secret)),
        // A public client names itself and proves nothing but PKCE.
        None => form.push(("client_id", &client.id)),
    }
    let r = r.form(&form).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

/// The ID token's claims, after checking its RS256 signature against the
/// provider's JWKS; also returns the key id.
async fn verified_claims(idp: &OidcProvider, id_token: &str) -> (Value, String) {
    let d = discovery(idp).await;
    let jwks: Value = Browser::new(&[idp.ca_file()])
        .client()
        .get(&d.jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parts: Vec<&str> = id_token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS: {id_token}");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let kid = header["kid"].as_str().unwrap().to_owned();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("key {kid} not in {jwks}"));
    assert_eq!(key["kty"], "RSA");
    let n = B64.decode(key["n"].as_str().unwrap()).unwrap();
    let e = B64.decode(key["e"].as_str().unwrap()).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    let signature = B64.decode(parts[2]).unwrap();
    ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &signature,
        )
        .expect("ID token signature");
    // The same check fails on a token whose payload was changed.
    let mut forged = B64.decode(parts[1]).unwrap();
    forged[0] ^= 1;
    let forged = format!("{}.{}", parts[0], B64.encode(forged));
    assert!(
        ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                forged.as_bytes(),
                &signature,
            )
            .is_err()
    );
    let claims = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    (claims, kid)
}

/// A whole sign-in: authorize, login, consent, code, tokens; returns the
/// verified ID token claims and the token response.
async fn sign_in(idp: &OidcProvider, client: &Client, scope: &str) -> (Value, Value) {
    let browser = Browser::new(&[idp.ca_file()]);
    let a = attempt(idp, &client.id, scope, true).await;
    let f = to_redirect_uri(&browser, &a).await;
    let code = f
        .param("code")
        .unwrap_or_else(|| panic!("no code: {:?}", f.stopped_at));
    let (status, tokens) = redeem(idp, client, &code, &a.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (claims, _) = verified_claims(idp, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["nonce"], a.nonce.as_str());
    (claims, tokens)
}

fn alice() -> Person {
    Person::new("alice-0001", "alice@example.com")
        .name("Alice Example")
        .groups(&["eng", "ops"])
}

#[tokio::test]
async fn authorization_code_flow_with_pkce_yields_a_signed_id_token_with_the_persons_claims() {
    let Some(_) = oidc_provider::hydra_or_skip() else {
        return;
    };
    let idp = OidcProvider::start().await;
    let client = idp
        .create_client(&ClientSpec {
            post_logout_redirect_uris: vec![LOGGED_OUT.into()],
            ..ClientSpec::confidential("gatehouse-control", &[REDIRECT])
        })
        .await;
    idp.sign_in_as(alice());

    // Discovery names this issuer and endpoints under it.
    let d = discovery(&idp).await;
    assert_eq!(d.issuer, idp.issuer());
    for endpoint in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
        assert!(endpoint.starts_with(&idp.issuer()), "{endpoint}");
    }

    let browser = Browser::new(&[idp.ca_file()]);
    let a = attempt(&idp, &client.id, "openid email profile", true).await;
    let f = to_redirect_uri(&browser, &a).await;
    // authorize → login app → Hydra → consent app → Hydra → redirect URI.
    let hosts: Vec<String> = f
        .visited
        .iter()
        .map(|u| format!("{}{}", u.authority(), u.path()))
        .collect();
    let app = Url::parse(&idp.app_url()).unwrap();
    let hydra = Url::parse(&idp.issuer()).unwrap();
    assert_eq!(
        hosts,
        [
            format!("{}/oauth2/auth", hydra.authority()),
            format!("{}/login", app.authority()),
            format!("{}/oauth2/auth", hydra.authority()),
            format!("{}/consent", app.authority()),
            format!("{}/oauth2/auth", hydra.authority()),
        ]
    );
    // Hydra's login and consent cookies were kept between the hops.
    assert!(browser.cookies(&idp.issuer()).is_some());

    let code = f.param("code").unwrap();
    let (status, tokens) = redeem(&idp, &client, &code, &a.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "bearer");
    let (claims, _) = verified_claims(&idp, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], idp.issuer().as_str());
    assert_eq!(claims["aud"], serde_json::json!([client.id]));
    assert_eq!(claims["sub"], "alice-0001");
    assert_eq!(claims["nonce"], a.nonce.as_str());
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], serde_json::json!(["eng", "ops"]));
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    // The access token reads the same claims at the userinfo endpoint.
    let info: Value = browser
        .client()
        .get(&d.userinfo_endpoint)
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], "alice-0001", "{info}");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["groups"], serde_json::json!(["eng", "ops"]));

    // The code is single-use, and using it again revokes what it gave.
    let (status, again) = redeem(&idp, &client, &code, &a.verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(again["error"], "invalid_grant");
    let r = browser
        .client()
        .get(&d.userinfo_endpoint)
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // RP-initiated logout, back to the client.
    let mut logout = Url::parse(&d.end_session_endpoint).unwrap();
    logout
        .query_pairs_mut()
        .append_pair("id_token_hint", tokens["id_token"].as_str().unwrap())
        .append_pair("post_logout_redirect_uri", LOGGED_OUT)
        .append_pair("state", "bye");
    let f = browser
        .follow(logout.as_str(), |u| u.as_str().starts_with(LOGGED_OUT))
        .await;
    assert!(
        f.stopped_at.is_some(),
        "{} {} after {:?}",
        f.status,
        f.body,
        f.visited
    );
    assert_eq!(f.param("state").as_deref(), Some("bye"));
    // Nothing was remembered, so there is no session to end: the
    // provider sends the browser straight back.
    assert_eq!(f.visited.len(), 1, "{:?}", f.visited);

    assert_eq!(
        idp.events(),
        [
            Event::Login {
                subject: "alice-0001".into(),
                client_id: client.id.clone(),
                requested_scopes: ["openid", "email", "profile"].map(String::from).to_vec(),
                request_url: a.url.clone(),
            },
            Event::Consent {
                subject: "alice-0001".into(),
                client_id: client.id.clone(),
                granted_scopes: ["openid", "email", "profile"].map(String::from).to_vec(),
            },
        ]
    );
}

#[tokio::test]
async fn claims_follow_the_granted_scopes_and_the_chosen_person() {
    let Some(_) = oidc_provider::hydra_or_skip() else {
        return;
    };
    let idp = OidcProvider::start().await;
    let client = idp
        .create_client(&ClientSpec::confidential("edge", &[REDIRECT]))
        .await;

    // Only `openid`: no email, no name; groups all the same.
    idp.sign_in_as(alice());
    let (claims, _) = sign_in(&idp, &client, "openid").await;
    assert_eq!(claims["sub"], "alice-0001");
    assert!(
        claims.get("email").is_none() && claims.get("name").is_none(),
        "{claims}"
    );
    assert_eq!(claims["groups"], serde_json::json!(["eng", "ops"]));

    // Another person, unverified, with an extra claim.
    idp.sign_in_as(
        Person::new("bob-0002", "bob@example.net")
            .unverified()
            .claim("department", serde_json::json!("sales")),
    );
    let (claims, _) = sign_in(&idp, &client, "openid email profile").await;
    assert_eq!(claims["sub"], "bob-0002");
    assert_eq!(claims["email"], "bob@example.net");
    assert_eq!(claims["email_verified"], false);
    assert_eq!(claims["department"], "sales");
    assert_eq!(claims["groups"], serde_json::json!([]));
    assert!(claims.get("name").is_none());
}

#[tokio::test]
async fn refused_login_and_consent_reach_the_client_as_access_denied() {
    let Some(_) = oidc_provider::hydra_or_skip() else {
        return;
    };
    let idp = OidcProvider::start().await;
    let client = idp
        .create_client(&ClientSpec::confidential("gatehouse-control", &[REDIRECT]))
        .await;
    let browser = Browser::new(&[idp.ca_file()]);

    // Nobody chosen yet: the login app says so instead of guessing.
    let a = attempt(&idp, &client.id, "openid", true).await;
    let f = browser
        .follow(&a.url, |u| u.as_str().starts_with(REDIRECT))
        .await;
    assert_eq!(f.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(f.body.contains("sign_in_as"), "{}", f.body);

    idp.refuse_login("account disabled");
    let a = attempt(&idp, &client.id, "openid", true).await;
    let f = to_redirect_uri(&browser, &a).await;
    assert_eq!(f.param("error").as_deref(), Some("access_denied"));
    assert_eq!(
        f.param("error_description").as_deref(),
        Some("account disabled")
    );
    assert!(f.param("code").is_none());

    idp.sign_in_as(alice());
    idp.refuse_consent(true);
    let a = attempt(&idp, &client.id, "openid", true).await;
    let f = to_redirect_uri(&browser, &a).await;
    assert_eq!(f.param("error").as_deref(), Some("access_denied"));
    assert!(f.param("code").is_none());

    idp.refuse_consent(false);
    let (claims, _) = sign_in(&idp, &client, "openid").await;
    assert_eq!(claims["sub"], "alice-0001");

    let kinds: Vec<&str> = idp
        .events()
        .iter()
        .map(|e| match e {
            Event::Login { .. } => "login",
            Event::LoginRefused { .. } => "login refused",
            Event::Consent { .. } => "consent",
            Event::ConsentRefused { .. } => "consent refused",
            Event::Error { .. } => "error",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "error",
            "login refused",
            "login",
            "consent refused",
            "login",
            "consent"
        ]
    );
}

#[tokio::test]
async fn pkce_is_required_and_checked_and_unknown_redirect_uris_are_refused() {
    let Some(_) = oidc_provider::hydra_or_skip() else {
        return;
    };
    let idp = OidcProvider::start().await;
    let client = idp
        .create_client(&ClientSpec::confidential("gatehouse-control", &[REDIRECT]))
        .await;
    idp.sign_in_as(alice());
    let browser = Browser::new(&[idp.ca_file()]);

    // Without a code challenge: refused at the redirect URI, with no code.
    // (Hydra checks PKCE when it would issue the code, after login and
    // consent.)
    let a = attempt(&idp, &client.id, "openid", false).await;
    let f = to_redirect_uri(&browser, &a).await;
    assert_eq!(
        f.param("error").as_deref(),
        Some("invalid_request"),
        "{:?}",
        f.stopped_at
    );
    assert!(f.param("code").is_none());

    // A code redeemed with the wrong verifier is refused.
    let a = attempt(&idp, &client.id, "openid", true).await;
    let f = to_redirect_uri(&browser, &a).await;
    let code = f.param("code").unwrap();
    let (status, body) = redeem(&idp, &client, &code, &random()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // A wrong client secret is refused.
    let a = attempt(&idp, &client.id, "openid", true).await;
    let code = to_redirect_uri(&browser, &a).await.param("code").unwrap();
    let wrong = Client {
        id: client.id.clone(),
        secret: Some("not-the-secret".into()),
    };
    let (status, body) = redeem(&idp, &wrong, &code, &a.verifier).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    // A redirect URI the client does not have: Hydra's error page, never
    // a redirect to it.
    let mut url = Url::parse(&a.url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "redirect_uri" {
                "https://127.0.0.1:9/elsewhere".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let f = browser
        .follow(url.as_str(), |u| u.path() == "/elsewhere")
        .await;
    assert!(f.stopped_at.is_none(), "{:?}", f.stopped_at);
    assert_eq!(f.status, StatusCode::BAD_REQUEST);
    assert!(
        matches!(idp.events().last(), Some(Event::Error { error, .. }) if error == "invalid_request"),
        "{:?}",
        idp.events()
    );
}

#[tokio::test]
async fn a_stopped_provider_refuses_connections_and_serves_again_after_restart() {
    let Some(_) = oidc_provider::hydra_or_skip() else {
        return;
    };
    // In memory: the client is created again, the signing key is new.
    let mut idp = OidcProvider::start().await;
    let client = idp
        .create_client(&ClientSpec::confidential("gatehouse-control", &[REDIRECT]))
        .await;
    idp.sign_in_as(alice());
    let (_, tokens) = sign_in(&idp, &client, "openid").await;
    let (_, kid_before) = verified_claims(&idp, tokens["id_token"].as_str().unwrap()).await;

    idp.stop();
    assert!(!idp.running());
    let err = Browser::new(&[idp.ca_file()])
        .client()
        .get(idp.discovery_url())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    idp.restart().await;
    assert!(idp.running());
    let (claims, tokens) = sign_in(&idp, &client, "openid").await;
    assert_eq!(claims["sub"], "alice-0001");
    let (_, kid_after) = verified_claims(&idp, tokens["id_token"].as_str().unwrap()).await;
    assert_ne!(
        kid_before, kid_after,
        "an in-memory provider starts with new keys"
    );

    // Persistent: clients and keys outlive a crash. (And a lifetime of
    // our choosing for ID tokens.)
    let pki = Pki::new();
    let mut idp = OidcProvider::start_with(
        &pki,
        Options {
            persistent: true,
            id_token_ttl: Some(std::time::Duration::from_secs(90)),
            ..Options::default()
        },
    )
    .await;
    let client = idp
        .create_client(&ClientSpec::public("cli", &[REDIRECT]))
        .await;
    idp.sign_in_as(alice());
    let browser = Browser::new(&[&pki.ca]);
    let a = attempt(&idp, &client.id, "openid", true).await;
    let code = to_redirect_uri(&browser, &a).await.param("code").unwrap();
    let (status, tokens) = redeem(&idp, &client, &code, &a.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (claims, kid_before) = verified_claims(&idp, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        90
    );

    idp.kill();
    idp.restart().await;
    let a = attempt(&idp, &client.id, "openid", true).await;
    let code = to_redirect_uri(&browser, &a).await.param("code").unwrap();
    let (status, tokens) = redeem(&idp, &client, &code, &a.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, kid_after) = verified_claims(&idp, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(kid_before, kid_after);
}
