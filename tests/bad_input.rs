//! Bad input: every malformed or unauthorized request gets a clear error in
//! the protocol's form, and none of them affects other subscribers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn challenge(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_bad_request_is_refused_and_no_subscriber_is_affected() {
    let hub = Hub::start(&[("mercure.max_body", "10000")]);
    // A bystander that must receive every good publication, in order.
    let mut bystander = open(&hub, "match=good", &[]).await;
    let mut sent = Vec::new();
    let publisher = publisher(&hub);
    let narrow = token(&hub, &["publish"], &["allowed"]);
    let expired = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["publish"], &["*"])]), -60),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();
    let wrong_key = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["publish"], &["*"])]), 60),
        "not-the-key",
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();

    // (token, body, status, challenge error) for publish requests.
    let cases: Vec<(Option<&str>, String, u16, Option<&str>)> = vec![
        (None, "topic=good&data=x".into(), 401, None),
        (
            Some("garbage"),
            "topic=good&data=x".into(),
            401,
            Some("invalid_token"),
        ),
        (
            Some(&expired),
            "topic=good&data=x".into(),
            401,
            Some("invalid_token"),
        ),
        (
            Some(&wrong_key),
            "topic=good&data=x".into(),
            401,
            Some("invalid_token"),
        ),
        (
            Some(&narrow),
            "topic=not-allowed&data=x".into(),
            403,
            Some("insufficient_scope"),
        ),
        (
            Some(&narrow),
            "topic=allowed&topic=not-allowed&data=x".into(),
            403,
            Some("insufficient_scope"),
        ),
        (Some(&publisher), "data=no-topic".into(), 400, None),
        (Some(&publisher), "topic=%2A&data=x".into(), 400, None),
        (
            Some(&publisher),
            format!("topic={}", enc("/.well-known/mercure/subscriptions/x")),
            400,
            None,
        ),
        (Some(&publisher), "topic=good&id=%23frag".into(), 400, None),
        (Some(&publisher), "topic=good&id=earliest".into(), 400, None),
        (
            Some(&publisher),
            "topic=good&id=a%0Aevent%3A%20forged".into(),
            400,
            None,
        ),
        (
            Some(&publisher),
            "topic=good&type=mercure".into(),
            400,
            None,
        ),
        (Some(&publisher), "topic=good&type=a%0Db".into(), 400, None),
        (Some(&publisher), "topic=good&retry=soon".into(), 400, None),
        (Some(&publisher), "topic=good%FF&data=x".into(), 400, None),
        (
            Some(&publisher),
            format!("topic=good&data={}", "x".repeat(20_000)),
            413,
            None,
        ),
        (
            Some(&publisher),
            (0..101)
                .map(|i| format!("topic=t{i}"))
                .collect::<Vec<_>>()
                .join("&"),
            413,
            None,
        ),
    ];
    for (i, (token, body, status, error)) in cases.iter().enumerate() {
        let (got, headers, text) = post(&hub, *token, body).await;
        assert_eq!(got, *status, "case {i}: {body:.60} → {text}");
        assert!(!text.trim().is_empty(), "case {i}: no message");
        if *status == 401 || *status == 403 {
            let c = challenge(&headers);
            assert!(c.starts_with("Bearer"), "case {i}: no Bearer challenge");
            assert!(c.contains("resource_metadata="), "case {i}: {c}");
            match error {
                Some(e) => assert!(c.contains(&format!("error=\"{e}\"")), "case {i}: {c}"),
                None => assert!(!c.contains("error="), "case {i}: {c}"),
            }
        }
        // A good publication between every bad request.
        sent.push(publish(&hub, "good", &format!("after case {i}")).await);
    }

    // A malformed Authorization header is an invalid_request.
    let res = reqwest::Client::new()
        .post(hub.hub_url())
        .header("authorization", "Basic dXNlcjpwYXNz")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=good")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(challenge(res.headers()).contains("error=\"invalid_request\""));
    // The wrong media type.
    let res = reqwest::Client::new()
        .post(hub.hub_url())
        .bearer_auth(&publisher)
        .header("content-type", "application/json")
        .body("{\"topic\":\"good\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    // Bad subscribe requests.
    for (query, status) in [
        ("", 400),
        ("foo=bar", 400),
        ("match_regex=.*", 400),
        ("MATCH=a", 400),
        ("matchx=a", 400),
        ("match_urlpattern=https%3A%2F%2Fe.com%2F(", 400),
        ("match=a%00b", 400),
        ("match=a%E2%80%8Bb", 400),
        ("match=%FF", 400),
        ("topic=https%3A%2F%2Fe.com%2F%7Bid", 400),
    ] {
        let s = open(&hub, query, &[]).await;
        assert_eq!(s.status, status, "subscribe {query:?}");
        sent.push(publish(&hub, "good", &format!("after subscribe {query}")).await);
    }
    let huge: Vec<String> = (0..101).map(|i| format!("match=t{i}")).collect();
    assert_eq!(open(&hub, &huge.join("&"), &[]).await.status, 400);
    let long = format!("match={}", "a".repeat(3000));
    assert_eq!(open(&hub, &long, &[]).await.status, 400);
    let s = open(&hub, "match=a", &[("authorization", "Bearer nope")]).await;
    assert_eq!(s.status, 401);
    assert!(challenge(&s.headers).contains("invalid_token"));

    // A token whose authorization details are malformed is invalid as a whole.
    let bad_details = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["subscribe"], &["*"]), {"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics": [{"match": "x", "match_type": "nope"}]}]), 60),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();
    let auth = format!("Bearer {bad_details}");
    assert_eq!(
        open(&hub, "match=a", &[("authorization", &auth)])
            .await
            .status,
        401
    );

    // The bystander saw every good publication, once, in order.
    for id in &sent {
        let e = bystander.next().await;
        assert_eq!(e.id.as_ref(), Some(id));
    }
    assert!(bystander
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn publishing_with_a_cookie_requires_a_matching_origin() {
    let hub = Hub::start(&[("mercure.cors_origins", "https://app.example")]);
    let cookie = format!("__Secure-mercure_access_token={}", publisher(&hub));
    let send = |origin: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(hub.hub_url())
            .header("cookie", cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("topic=c&data=x");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(None).await, 403, "no Origin or Referer");
    assert_eq!(send(Some("https://evil.example")).await, 403);
    assert_eq!(send(Some("https://app.example")).await, 200);
}
