//! Centrifugo's permission options and expiries, with their meaning in
//! Centrifugo v6: who may subscribe, publish, ask presence and history
//! (`allow_*_for_client` / `_for_subscriber` / `_for_anonymous`),
//! user-limited and private channels, `channel_regex`, join/leave pushes
//! only when asked, recovery only where the namespace allows it, history
//! switched off, and subscriptions that end with their token.

mod common;

use std::time::Duration;

use common::ws::*;
use common::Hub;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The namespaces the tests below use: each grants one thing.
const NAMESPACES: &str = r#"
[[centrifugo.namespaces]]
name = "client"
allow_subscribe_for_client = true
allow_publish_for_client = true
allow_presence_for_client = true
allow_history_for_client = true
presence = true

[[centrifugo.namespaces]]
name = "anon"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_anonymous = true
allow_history_for_subscriber = true
allow_history_for_anonymous = true

[[centrifugo.namespaces]]
name = "subscriber"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
presence = true

[[centrifugo.namespaces]]
name = "nopresence"
allow_presence_for_client = true

[[centrifugo.namespaces]]
name = "nohistory"
allow_subscribe_for_client = true
allow_history_for_client = true
force_recovery = true
history_size = 0

[[centrifugo.namespaces]]
name = "personal"
allow_subscribe_for_client = true
allow_user_limited_channels = true

[[centrifugo.namespaces]]
name = "strict"
allow_subscribe_for_client = true
allow_publish_for_client = true
channel_regex = "^[a-z0-9]+$"

[[centrifugo.namespaces]]
name = "room"
allow_subscribe_for_client = true
allow_presence_for_subscriber = true
presence = true
join_leave = true

[[centrifugo.namespaces]]
name = "lobby"
allow_subscribe_for_client = true
join_leave = true
force_push_join_leave = true

[[centrifugo.namespaces]]
name = "recover"
allow_subscribe_for_client = true
allow_recovery = true

[[centrifugo.namespaces]]
name = "plain"
allow_subscribe_for_client = true
"#;

fn hub(extra: &[(&str, &str)]) -> Hub {
    let mut args = vec![
        ("centrifugo.token_key", SECRET),
        ("centrifugo.api_key", API_KEY),
        ("centrifugo.anonymous", "true"),
    ];
    args.extend_from_slice(extra);
    Hub::start_with_file(NAMESPACES, &args)
}

async fn anonymous(hub: &Hub) -> Ws {
    let mut ws = dial(hub, None).await.unwrap();
    send(&mut ws, &json!({"id": 1, "connect": {}}).to_string()).await;
    let r = recv(&mut ws).await;
    assert!(r[0]["connect"]["client"].is_string(), "{r:?}");
    ws
}

/// Sends one command and returns its reply (pushes before it are dropped).
async fn call(ws: &mut Ws, id: u64, command: Value) -> Value {
    let mut frame = command;
    frame["id"] = json!(id);
    send(ws, &frame.to_string()).await;
    loop {
        for m in recv(ws).await {
            if m["id"] == json!(id) {
                return m;
            }
        }
    }
}

/// The error code of a reply (0: success).
fn code(reply: &Value) -> u64 {
    reply["error"]["code"].as_u64().unwrap_or(0)
}

/// Every push received within `wait`.
async fn pushes_within(ws: &mut Ws, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = msg {
            out.extend(
                t.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
                    .filter_map(|v| v.get("push").cloned()),
            );
        }
    }
    out
}

fn sub(channel: &str) -> Value {
    json!({"subscribe": {"channel": channel}})
}

fn publish(channel: &str) -> Value {
    json!({"publish": {"channel": channel, "data": {"x": 1}}})
}

fn sub_token(user: &str, channel: &str, exp_in: i64) -> String {
    let now = tidings::time::now_secs() as i64;
    tidings::auth::jwt::mint(
        &json!({"sub": user, "channel": channel, "exp": now + exp_in}),
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap()
}

#[tokio::test]
async fn anonymous_connections_get_only_what_is_granted_to_anonymous() {
    let hub = hub(&[]);
    let mut anon = anonymous(&hub).await;
    let mut user = connected(&hub, "ann").await;
    // `_for_client` alone: users yes, anonymous no.
    assert_eq!(code(&call(&mut anon, 2, sub("client:a")).await), 103);
    assert_eq!(code(&call(&mut anon, 3, publish("client:a")).await), 103);
    let history = json!({"history": {"channel": "client:a", "limit": 1}});
    assert_eq!(code(&call(&mut anon, 4, history.clone()).await), 103);
    let presence = json!({"presence": {"channel": "client:a"}});
    assert_eq!(code(&call(&mut anon, 5, presence.clone()).await), 103);
    assert_eq!(code(&call(&mut user, 2, sub("client:a")).await), 0);
    assert_eq!(code(&call(&mut user, 3, publish("client:a")).await), 0);
    assert_eq!(code(&call(&mut user, 4, history).await), 0);
    assert_eq!(code(&call(&mut user, 5, presence).await), 0);
    // `_for_anonymous` extends the grants to anonymous connections.
    assert_eq!(code(&call(&mut anon, 6, sub("anon:a")).await), 0);
    assert_eq!(code(&call(&mut anon, 7, publish("anon:a")).await), 0);
    let history = json!({"history": {"channel": "anon:a", "limit": 1}});
    assert_eq!(code(&call(&mut anon, 8, history).await), 0);
}

#[tokio::test]
async fn subscriber_grants_need_a_subscription() {
    let hub = hub(&[]);
    let mut user = connected(&hub, "bob").await;
    let history = json!({"history": {"channel": "subscriber:s", "limit": 1}});
    let presence = json!({"presence_stats": {"channel": "subscriber:s"}});
    assert_eq!(
        code(&call(&mut user, 2, publish("subscriber:s")).await),
        103
    );
    assert_eq!(code(&call(&mut user, 3, history.clone()).await), 103);
    assert_eq!(code(&call(&mut user, 4, presence.clone()).await), 103);
    assert_eq!(code(&call(&mut user, 5, sub("subscriber:s")).await), 0);
    assert_eq!(code(&call(&mut user, 6, publish("subscriber:s")).await), 0);
    assert_eq!(code(&call(&mut user, 7, history.clone()).await), 0);
    assert_eq!(code(&call(&mut user, 8, presence).await), 0);
    // An anonymous subscriber: `_for_subscriber` without `_for_anonymous`.
    let mut anon = anonymous(&hub).await;
    assert_eq!(code(&call(&mut anon, 2, sub("subscriber:s")).await), 0);
    assert_eq!(
        code(&call(&mut anon, 3, publish("subscriber:s")).await),
        103
    );
    assert_eq!(code(&call(&mut anon, 4, history).await), 103);
    // After unsubscribing, the grant is gone.
    let unsub = json!({"unsubscribe": {"channel": "subscriber:s"}});
    assert_eq!(code(&call(&mut user, 9, unsub).await), 0);
    assert_eq!(
        code(&call(&mut user, 10, publish("subscriber:s")).await),
        103
    );
}

#[tokio::test]
async fn features_that_are_off_answer_not_available() {
    let hub = hub(&[]);
    let mut user = connected(&hub, "cat").await;
    // Presence allowed but not tracked; history allowed but switched off.
    let presence = json!({"presence": {"channel": "nopresence:x"}});
    assert_eq!(code(&call(&mut user, 2, presence).await), 108);
    let history = json!({"history": {"channel": "nohistory:x", "limit": 1}});
    assert_eq!(code(&call(&mut user, 3, history).await), 108);
    // … and a channel without history does not recover, even forced.
    api(
        &hub,
        "publish",
        json!({"channel": "nohistory:x", "data": {}}),
    )
    .await;
    let r = call(
        &mut user,
        4,
        json!({"subscribe": {"channel": "nohistory:x", "recover": true, "recoverable": true, "offset": 0, "epoch": "e"}}),
    )
    .await;
    assert_eq!(r["subscribe"]["recoverable"], Value::Null, "{r}");
    assert_eq!(r["subscribe"]["publications"], Value::Null, "{r}");
}

#[tokio::test]
async fn user_limited_and_private_channels() {
    let hub = hub(&[("centrifugo.channel.allow_subscribe_for_client", "true")]);
    let mut u42 = connected(&hub, "42").await;
    let mut u43 = connected(&hub, "43").await;
    let mut u44 = connected(&hub, "44").await;
    let mut anon = anonymous(&hub).await;
    assert_eq!(code(&call(&mut u42, 2, sub("personal:inbox#42")).await), 0);
    assert_eq!(
        code(&call(&mut u43, 2, sub("personal:inbox#42")).await),
        103
    );
    assert_eq!(
        code(&call(&mut anon, 2, sub("personal:inbox#42")).await),
        103
    );
    assert_eq!(
        code(&call(&mut u42, 3, sub("personal:dialog#42,43")).await),
        0
    );
    assert_eq!(
        code(&call(&mut u43, 3, sub("personal:dialog#42,43")).await),
        0
    );
    assert_eq!(
        code(&call(&mut u44, 3, sub("personal:dialog#42,43")).await),
        103
    );
    // A private channel needs a token, whatever the namespace allows.
    assert_eq!(code(&call(&mut u44, 4, sub("$secret")).await), 103);
    let with_token =
        json!({"subscribe": {"channel": "$secret", "token": sub_token("44", "$secret", 60)}});
    assert_eq!(code(&call(&mut u44, 5, with_token).await), 0);
}

#[tokio::test]
async fn channel_regex_refuses_other_names() {
    let hub = hub(&[]);
    let mut user = connected(&hub, "dan").await;
    assert_eq!(code(&call(&mut user, 2, sub("strict:abc1")).await), 0);
    assert_eq!(code(&call(&mut user, 3, sub("strict:ABC")).await), 107);
    assert_eq!(code(&call(&mut user, 4, publish("strict:a-b")).await), 107);
    assert_eq!(code(&call(&mut user, 5, publish("strict:ab")).await), 0);
}

#[tokio::test]
async fn join_and_leave_are_pushed_to_who_asks_or_when_forced() {
    let hub = hub(&[]);
    let mut asked = connected(&hub, "asks").await;
    let mut silent = connected(&hub, "silent").await;
    let r = call(
        &mut asked,
        2,
        json!({"subscribe": {"channel": "room:1", "join_leave": true}}),
    )
    .await;
    assert_eq!(code(&r), 0);
    assert_eq!(code(&call(&mut silent, 2, sub("room:1")).await), 0);
    let mut newcomer = connected(&hub, "new").await;
    assert_eq!(code(&call(&mut newcomer, 2, sub("room:1")).await), 0);
    let joins = |pushes: &[Value]| pushes.iter().filter(|p| p["join"].is_object()).count();
    // Its own join, then the two others' (Centrifugo tells the joiner too).
    assert_eq!(
        joins(&pushes_within(&mut asked, Duration::from_millis(500)).await),
        3
    );
    assert_eq!(
        joins(&pushes_within(&mut silent, Duration::from_millis(200)).await),
        0,
        "not asked"
    );
    // force_push_join_leave: everyone gets them.
    let mut first = connected(&hub, "first").await;
    assert_eq!(code(&call(&mut first, 2, sub("lobby:1")).await), 0);
    let mut second = connected(&hub, "second").await;
    assert_eq!(code(&call(&mut second, 2, sub("lobby:1")).await), 0);
    assert!(joins(&pushes_within(&mut first, Duration::from_millis(500)).await) >= 1);
}

#[tokio::test]
async fn recovery_only_where_the_namespace_allows_and_never_a_partial_one() {
    let hub = hub(&[]);
    for i in 1..=3 {
        for channel in ["plain:r", "recover:r", "client:r"] {
            api(
                &hub,
                "publish",
                json!({"channel": channel, "data": {"i": i}}),
            )
            .await;
        }
    }
    let mut user = connected(&hub, "eve").await;
    let epoch_of = |r: &Value| r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let first = call(&mut user, 2, sub("recover:r")).await;
    let epoch = epoch_of(&first);
    let asking = |channel: &str, epoch: &str| json!({"subscribe": {"channel": channel, "recoverable": true, "recover": true, "offset": 1, "epoch": epoch}});
    // No history access, no allow_recovery: not recoverable.
    let plain = call(&mut user, 3, sub("plain:r")).await;
    let plain_epoch = epoch_of(&plain);
    call(&mut user, 4, json!({"unsubscribe": {"channel": "plain:r"}})).await;
    let r = call(&mut user, 5, asking("plain:r", &plain_epoch)).await;
    assert_eq!(r["subscribe"]["recoverable"], Value::Null, "{r}");
    assert_eq!(r["subscribe"]["publications"], Value::Null, "{r}");
    // allow_recovery: recovered.
    call(
        &mut user,
        6,
        json!({"unsubscribe": {"channel": "recover:r"}}),
    )
    .await;
    let r = call(&mut user, 7, asking("recover:r", &epoch)).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["publications"].as_array().unwrap().len(), 2);
    // A stale epoch: not recovered, and no publications either.
    let r = call(&mut user, 8, asking("client:r", "another-epoch")).await;
    assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    assert_eq!(r["subscribe"]["recovered"], Value::Null, "{r}");
    assert_eq!(r["subscribe"]["publications"], Value::Null, "{r}");
}

#[tokio::test]
async fn history_pages_backwards_from_a_position() {
    let hub = hub(&[]);
    for i in 1..=8 {
        api(
            &hub,
            "publish",
            json!({"channel": "client:h", "data": {"i": i}}),
        )
        .await;
    }
    let mut user = connected(&hub, "fay").await;
    let offsets = |r: &Value| -> Vec<u64> {
        r["history"]["publications"]
            .as_array()
            .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
            .unwrap_or_default()
    };
    let newest = call(
        &mut user,
        2,
        json!({"history": {"channel": "client:h", "limit": 3, "reverse": true}}),
    )
    .await;
    assert_eq!(offsets(&newest), vec![8, 7, 6]);
    let epoch = newest["history"]["epoch"].clone();
    let older = call(
        &mut user,
        3,
        json!({"history": {"channel": "client:h", "limit": 3, "reverse": true, "since": {"offset": 6, "epoch": epoch}}}),
    )
    .await;
    assert_eq!(offsets(&older), vec![5, 4, 3]);
    let oldest = call(
        &mut user,
        4,
        json!({"history": {"channel": "client:h", "limit": 3, "reverse": true, "since": {"offset": 3, "epoch": epoch}}}),
    )
    .await;
    assert_eq!(offsets(&oldest), vec![2, 1]);
    let forward = call(
        &mut user,
        5,
        json!({"history": {"channel": "client:h", "limit": 3, "since": {"offset": 6, "epoch": epoch}}}),
    )
    .await;
    assert_eq!(offsets(&forward), vec![7, 8]);
}

#[tokio::test]
async fn subscriptions_end_with_their_token_unless_refreshed() {
    let hub = hub(&[("centrifugo.expired_sub_close_delay", "1s")]);
    let mut user = connected(&hub, "gus").await;
    for (id, channel) in [(2, "$stale"), (3, "$fresh")] {
        let frame =
            json!({"subscribe": {"channel": channel, "token": sub_token("gus", channel, 2)}});
        let r = call(&mut user, id, frame).await;
        assert_eq!(r["subscribe"]["expires"], true, "{r}");
    }
    let refresh =
        json!({"sub_refresh": {"channel": "$fresh", "token": sub_token("gus", "$fresh", 3600)}});
    let r = call(&mut user, 4, refresh).await;
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");
    // Past expiry and grace, `$stale` ends: unsubscribe 2501.
    let pushes = pushes_within(&mut user, Duration::from_millis(4500)).await;
    let ended: Vec<&Value> = pushes
        .iter()
        .filter(|p| p["unsubscribe"].is_object())
        .collect();
    assert_eq!(ended.len(), 1, "{pushes:?}");
    assert_eq!(ended[0]["channel"], "$stale");
    assert_eq!(ended[0]["unsubscribe"]["code"], 2501);
    // Nothing published to it later arrives; `$fresh` still delivers.
    for channel in ["$stale", "$fresh"] {
        api(
            &hub,
            "publish",
            json!({"channel": channel, "data": {"late": true}}),
        )
        .await;
    }
    let pushes = pushes_within(&mut user, Duration::from_millis(500)).await;
    let channels: Vec<&Value> = pushes.iter().map(|p| &p["channel"]).collect();
    assert_eq!(channels, vec!["$fresh"], "{pushes:?}");
}

#[tokio::test]
async fn server_side_subscriptions_expire_with_a_disconnect() {
    let hub = hub(&[("centrifugo.expired_sub_close_delay", "1s")]);
    let mut user = connected(&hub, "hal").await;
    let expire_at = tidings::time::now_secs() + 1;
    let (status, _) = api(
        &hub,
        "subscribe",
        json!({"user": "hal", "channel": "plain:s", "expire_at": expire_at, "data": {"welcome": 1}}),
    )
    .await;
    assert_eq!(status, 200);
    let pushes = pushes_within(&mut user, Duration::from_millis(300)).await;
    assert_eq!(pushes[0]["subscribe"]["data"]["welcome"], 1, "{pushes:?}");
    assert_eq!(closed(&mut user).await.0, 3006);
}

#[tokio::test]
async fn token_claims_subs_b64info_and_client() {
    let hub = hub(&[]);
    let now = tidings::time::now_secs();
    let mint = |claims: Value| {
        tidings::auth::jwt::mint(&claims, SECRET, jsonwebtoken::Algorithm::HS256, false).unwrap()
    };
    // `subs`: server-side subscriptions with their channel info and data;
    // `b64info`: connection info in base64.
    let token = mint(json!({
        "sub": "ivy", "exp": now + 60, "b64info": "eyJuYW1lIjoiSXZ5In0=",
        "subs": {"client:feed": {"info": {"role": "reader"}, "data": {"welcome": true}}}
    }));
    let mut ws = dial(&hub, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": token}}).to_string(),
    )
    .await;
    let reply = recv(&mut ws).await.remove(0);
    let sub = &reply["connect"]["subs"]["client:feed"];
    assert_eq!(sub["data"]["welcome"], true, "{reply}");
    let client = reply["connect"]["client"].as_str().unwrap().to_owned();
    let presence = call(&mut ws, 2, json!({"presence": {"channel": "client:feed"}})).await;
    let me = &presence["presence"]["presence"][&client];
    assert_eq!(me["conn_info"]["name"], "Ivy", "{presence}");
    assert_eq!(me["chan_info"]["role"], "reader", "{presence}");
    // A subscription token bound to this connection works here…
    let bound = |client: &str| {
        mint(json!({"sub": "ivy", "channel": "$mine", "client": client, "exp": now + 60}))
    };
    let r = call(
        &mut ws,
        3,
        json!({"subscribe": {"channel": "$mine", "token": bound(&client)}}),
    )
    .await;
    assert_eq!(code(&r), 0, "{r}");
    // …and closes any other connection that presents it (3500).
    let mut other = connected(&hub, "ivy").await;
    let frame = json!({"id": 2, "subscribe": {"channel": "$mine", "token": bound(&client)}});
    send(&mut other, &frame.to_string()).await;
    assert_eq!(closed(&mut other).await.0, 3500);
}

#[tokio::test]
async fn api_refresh_tells_the_client_its_new_expiry() {
    let hub = hub(&[("centrifugo.expired_close_delay", "1s")]);
    let mut ws = dial(&hub, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": conn_token("joy", 2)}}).to_string(),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["connect"]["expires"], true);
    let expire_at = tidings::time::now_secs() + 3600;
    let (status, _) = api(
        &hub,
        "refresh",
        json!({"user": "joy", "expire_at": expire_at}),
    )
    .await;
    assert_eq!(status, 200);
    let pushes = pushes_within(&mut ws, Duration::from_millis(300)).await;
    let refresh = &pushes[0]["refresh"];
    assert_eq!(refresh["expires"], true, "{pushes:?}");
    assert!(refresh["ttl"].as_u64().unwrap() > 3000, "{pushes:?}");
    // Past the token's expiry and the grace, still connected.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = call(&mut ws, 2, json!({"ping": {}})).await;
    assert!(r["ping"].is_object(), "{r}");
}
