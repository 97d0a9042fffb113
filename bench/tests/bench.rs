//! `tidings-bench` against a tidings hub (run in this process): what it
//! reports is what happened.

use std::process::Command;

/// The settings both sides share: the bench mints its tokens with them.
const SETS: [&str; 8] = [
    "mercure.key=bench-mercure-key",
    "centrifugo.token_key=bench-secret",
    "centrifugo.api_key=bench-api-key",
    "centrifugo.channel.allow_subscribe=true",
    "centrifugo.channel.allow_publish=true",
    "history.engine=memory",
    "demo=false",
    "listen=127.0.0.1:0",
];

/// Starts a hub on a free port of this process; its base URL.
async fn hub() -> String {
    let sets: Vec<String> = SETS.iter().map(|s| s.to_string()).collect();
    let settings = tidings::config::from_process(None, &sets, &[]).expect("settings");
    let (bound, addr) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let serving = tidings::server::serve(settings, std::future::pending(), |a| {
            let _ = bound.send(a);
        });
        if let Err(e) = serving.await {
            panic!("hub: {e}");
        }
    });
    format!("http://{}", addr.await.expect("the hub did not start"))
}

fn bench(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings-bench"));
    cmd.args(args);
    for s in SETS {
        cmd.args(["--set", s]);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_a_hub_over_both_wires() {
    let url = hub().await;
    let dir = tempfile::tempdir().unwrap();
    for target in ["tidings-sse", "tidings-ws"] {
        let json = dir.path().join(format!("{target}.json"));
        let args = [
            "--quiet",
            "--target",
            target,
            "--url",
            &url,
            "--channels",
            "2",
            "--subscribers",
            "3",
            "--rate",
            "40",
            "--duration",
            "1s",
            "--json",
            json.to_str().unwrap(),
        ];
        let out = tokio::task::spawn_blocking({
            let mut cmd = bench(&args);
            move || cmd.output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["connections"], 6, "{report}");
        let step = &report["steps"][0];
        // 40 publications over 2 channels, 3 subscribers each: 120 deliveries.
        assert_eq!(step["published"], 40, "{target}: {step}");
        assert_eq!(step["expected"], 120, "{target}: {step}");
        assert_eq!(step["received"], 120, "{target}: {step}");
        assert_eq!(
            (step["lost"].as_u64(), step["duplicates"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(step["latency_p50_ms"].as_f64().unwrap() > 0.0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("deliv/s"),
            "a human table"
        );
    }
}

#[test]
fn refuses_a_remote_target_unless_allowed() {
    let out = bench(&["--url", "http://192.0.2.1:80"]).output().unwrap();
    assert!(!out.status.success(), "non-loopback targets are refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}
