//! The pages and their endpoints: assets, the demo ticker and session
//! tokens, the admin API behind its password, and their bad input. (The
//! pages themselves run in Chromium in tests/clients/browser.test.mjs.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn assets_are_served_and_unknown_ones_are_404() {
    let hub = Hub::start(&[]);
    let page = reqwest::get(hub.url("/")).await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/assets/demo.js"));
    for asset in ["app.css", "client.js", "chart.js", "demo.js", "admin.js"] {
        let res = reqwest::get(hub.url(&format!("/assets/{asset}")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
    let res = reqwest::get(hub.url("/assets/../Cargo.toml"))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = reqwest::get(hub.url("/assets/nope.js")).await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn the_demo_ticker_publishes_and_hands_out_session_tokens() {
    let hub = Hub::start(&[("demo", "true")]);
    let mut stream = open(&hub, "match=demo:ticker", &[]).await;
    let tick: Value = serde_json::from_str(&stream.next().await.data).unwrap();
    assert!(tick["seq"].as_u64().is_some_and(|s| s >= 1), "{tick}");
    assert_eq!(tick["quotes"].as_array().unwrap().len(), 5);
    let next: Value = serde_json::from_str(&stream.next().await.data).unwrap();
    assert_eq!(next["seq"].as_u64(), tick["seq"].as_u64().map(|s| s + 1));

    let session: Value = reqwest::get(hub.url("/demo/session?name=ada"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["user"], "ada");
    assert!(session["token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
    for bad in [
        "/demo/session",
        "/demo/session?name=",
        "/demo/session?name=%20",
        "/demo/session?name=a%0Ab",
    ] {
        let res = reqwest::get(hub.url(bad)).await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    let long = reqwest::get(hub.url(&format!("/demo/session?name={}", "x".repeat(100))))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        long["user"].as_str().unwrap().len(),
        32,
        "names are cut to 32 characters"
    );
}

#[tokio::test]
async fn demo_and_admin_are_off_unless_configured() {
    // The test hub has real keys: no demo unless asked, no admin without a password.
    let hub = Hub::start(&[]);
    for path in ["/demo/session?name=x", "/admin"] {
        assert_eq!(
            reqwest::get(hub.url(path)).await.unwrap().status(),
            404,
            "{path}"
        );
    }
    let res = reqwest::Client::new()
        .post(hub.url("/admin/api/info"))
        .basic_auth("admin", Some("anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let mut stream = open(&hub, "match=demo:ticker", &[]).await;
    assert!(
        stream
            .next_within(Duration::from_millis(700))
            .await
            .is_none(),
        "no ticker"
    );
}

#[tokio::test]
async fn the_admin_api_needs_the_password() {
    let hub = Hub::start(&[("admin.password", "s3cret")]);
    assert_eq!(reqwest::get(hub.url("/admin")).await.unwrap().status(), 200);
    let client = reqwest::Client::new();
    let call = |method: &str, auth: Option<&str>| {
        let mut req = client
            .post(hub.url(&format!("/admin/api/{method}")))
            .body("{}");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    use base64::Engine;
    let basic = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    for (auth, why) in [
        (None, "no credentials"),
        (Some("Bearer s3cret".to_owned()), "not Basic"),
        (Some("Basic %%%".to_owned()), "not base64"),
        (Some(basic("admin")), "no password part"),
        (Some(basic("admin:wrong")), "wrong password"),
        (Some(basic("admin:s3cre")), "a prefix of the password"),
    ] {
        let res = call("info", auth.as_deref()).await.unwrap();
        assert_eq!(res.status(), 401, "{why}");
        assert_eq!(res.text().await.unwrap(), "wrong admin password\n");
    }
    let good = basic("anyone:s3cret");
    let info: Value = call("info", Some(&good))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["result"]["nodes"].is_array(), "{info}");
    assert_eq!(call("nope", Some(&good)).await.unwrap().status(), 404);
    let recent: Value = call("recent", Some(&good))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failures = recent["result"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"] == "admin: wrong password")
        .count();
    assert_eq!(failures, 6, "{recent}");
}
