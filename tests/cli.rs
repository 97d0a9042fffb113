//! The `tidings` command line: publish, subscribe, token, and refusing a bad
//! configuration at start.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn tidings(hub: &Hub, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args(args)
        .env("TIDINGS_LISTEN", &hub.addr)
        .env("TIDINGS_MERCURE_KEY", KEY)
        .env("TIDINGS_MERCURE_ISSUER", ISSUER);
    cmd
}

#[tokio::test]
async fn publish_and_subscribe_commands() {
    let hub = Hub::start(&[]);
    let sub = tidings(&hub, &["subscribe", "--topic", "cli", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tidings(
        &hub,
        &[
            "publish", "--topic", "cli", "--data", "one\ntwo", "--id", "cli-1", "--type", "note",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-1");
    let out = tidings(
        &hub,
        &["publish", "--topic", "cli", "--data", "secret", "--private"],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["id"], "cli-1");
    assert_eq!(lines[0]["type"], "note");
    assert_eq!(lines[0]["data"], "one\ntwo");
    // The CLI subscriber's default token may read private updates.
    assert_eq!(lines[1]["data"], "secret");

    // Resume from history.
    let out = tidings(
        &hub,
        &[
            "subscribe",
            "--topic",
            "cli",
            "--last-event-id",
            "cli-1",
            "--count",
            "1",
        ],
    )
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"secret\""));
}

#[tokio::test]
async fn token_command_mints_tokens_the_hub_accepts() {
    let hub = Hub::start(&[]);
    let out = tidings(
        &hub,
        &[
            "token",
            "--publish",
            "https://e.com/:id",
            "--urlpattern",
            "--ttl",
            "5m",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        post(&hub, Some(&t), &format!("topic={}", enc("https://e.com/1")))
            .await
            .0,
        200
    );
    assert_eq!(post(&hub, Some(&t), "topic=elsewhere").await.0, 403);
    let out = tidings(&hub, &["token", "--publish", "*", "--legacy"])
        .output()
        .unwrap();
    let legacy = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(post(&hub, Some(&legacy), "topic=anything").await.0, 200);
    let out = tidings(&hub, &["token", "--publish", "*", "--secret", "wrong"])
        .output()
        .unwrap();
    let wrong = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(post(&hub, Some(&wrong), "topic=anything").await.0, 401);
}

#[test]
fn a_bad_configuration_stops_the_hub_with_a_clear_message() {
    for (args, expected) in [
        (vec!["--set", "history.ttl=soon"], "history.ttl"),
        (vec!["--listen", "nowhere"], "listen"),
        (vec!["--history", "tape"], "history.engine"),
        (
            vec!["--set", "mercure.cors_origins=not an origin"],
            "mercure.cors_origins",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mercure]\nanonymus = false\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("anonymus"));
}
