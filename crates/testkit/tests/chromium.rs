//! The browser harness itself (testkit's `chromium`): headless Chromium
//! trusting exactly the CAs it is given and checking certificates in full,
//! reaching loopback only (and the names a test maps there), and clicking
//! as a person does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::chromium::{self, Chromium};
use gatehouse_testkit::origin::HttpOrigin;
use gatehouse_testkit::pki::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_verified_against_the_given_cas_and_only_loopback_is_reached() {
    let Some(_) = chromium::browser_or_skip() else {
        return;
    };
    let pki = Pki::new();
    let other = Pki::new();
    let by_ip = HttpOrigin::start_tls("by-ip", &pki.leaf(&["127.0.0.1"])).await;
    let named = HttpOrigin::start_tls("named", &pki.leaf(&["app.example.test"])).await;
    let misnamed = HttpOrigin::start_tls("misnamed", &pki.leaf(&["other.example.test"])).await;
    let stranger = HttpOrigin::start_tls("stranger", &other.leaf(&["127.0.0.1"])).await;
    let named_at = named.addr.to_string();
    let misnamed_at = misnamed.addr.to_string();
    let b = Chromium::start_with_hosts(
        &[&pki.ca],
        &[
            ("app.example.test", &named_at),
            ("wrong.example.test", &misnamed_at),
        ],
    )
    .await;
    let page = b.new_page().await;

    page.navigate(&format!("https://{}/by-ip", by_ip.addr))
        .await;
    assert!(page.text().await.contains("origin=by-ip"));
    page.navigate("https://app.example.test/by-name").await;
    let text = page.text().await;
    assert!(
        text.contains("origin=named") && text.contains("host=app.example.test"),
        "{text}"
    );

    // A certificate from a CA the browser was not given; one for another
    // name; a name nobody mapped (no lookup leaves the machine).
    for (url, why) in [
        (
            format!("https://{}/", stranger.addr),
            "net::ERR_CERT_AUTHORITY_INVALID",
        ),
        (
            "https://wrong.example.test/".to_string(),
            "net::ERR_CERT_COMMON_NAME_INVALID",
        ),
        (
            "https://example.com/".to_string(),
            "net::ERR_NAME_NOT_RESOLVED",
        ),
    ] {
        assert_eq!(page.try_navigate(&url).await, Err(why.to_string()), "{url}");
    }
    assert!(stranger.seen().is_empty());
    assert!(misnamed.seen().is_empty());
    assert!(
        page.documents()
            .iter()
            .any(|d| d == "GET https://example.com/"),
        "{:?}",
        page.documents()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_is_a_persons_click() {
    let Some(_) = chromium::browser_or_skip() else {
        return;
    };
    let pki = Pki::new();
    let b = Chromium::start(&[&pki.ca]).await;
    let page = b.new_page().await;
    // Far below the fold: scrolled into view first. The handler sees a
    // trusted event (input the browser received, not one a script made).
    page.navigate(
        "data:text/html,<div style='height:3000px'></div>\
         <button id=go onclick=\"document.body.append('clicked trusted=' + event.isTrusted)\">Go</button>",
    )
    .await;
    page.click("#go").await;
    page.wait_for_text("clicked trusted=true").await;
    assert_eq!(page.evaluate("document.title").await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covered_button_cannot_be_clicked() {
    let Some(_) = chromium::browser_or_skip() else {
        return;
    };
    let pki = Pki::new();
    let b = Chromium::start(&[&pki.ca]).await;
    let page = std::sync::Arc::new(b.new_page().await);
    page.navigate(
        "data:text/html,<button id=go onclick=\"document.body.append('clicked')\">Go</button>\
         <div id=veil style='position:fixed;inset:0;background:white'></div>",
    )
    .await;
    let p = page.clone();
    let refused = tokio::spawn(async move { p.click("#go").await })
        .await
        .unwrap_err();
    let why = *refused.into_panic().downcast::<String>().unwrap();
    assert!(why.contains("covered by <div id=\"veil\""), "{why}");
    assert!(!page.text().await.contains("clicked"));
}
