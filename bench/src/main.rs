//! `tidings-bench` (also run as `tidings bench`): measures a server —
//! tidings or any SSE/WebSocket server — and prints what it measured. See
//! docs/performance.md.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tidings::cli::{self, TokenRequest};
use tidings_bench::client::{Publish, Subscribe};
use tidings_bench::{report, Report, Scenario, Target, Wire};

/// Measure a server (tidings or any SSE/WebSocket server): connections,
/// deliveries, loss, latency, CPU and memory.
#[derive(Parser)]
#[command(name = "tidings bench", version)]
struct BenchArgs {
    /// tidings' configuration (for its keys, when minting tokens).
    #[arg(long, short = 'c', env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    /// Set a tidings configuration key, e.g. `--set centrifugo.api_key=…`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// tidings-sse, tidings-ws, nchan-sse, nchan-ws, or custom (--sub-url, --pub-url).
    #[arg(long, default_value = "tidings-sse")]
    target: String,
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// custom: subscriber URL template with `{channel}` (ws:// for WebSocket).
    #[arg(long)]
    sub_url: Option<String>,
    /// custom: publish URL template with `{channel}`.
    #[arg(long)]
    pub_url: Option<String>,
    /// custom: publish body template (`{channel}`, `{payload}`, `{payload_form}`).
    #[arg(long, default_value = "{payload}")]
    pub_body: String,
    /// custom: publish header `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Scenario name for the report.
    #[arg(long, default_value = "fanout")]
    scenario: String,
    /// Channels.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Publications per second over all channels (0: connect only).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long each step publishes.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Ramp: multiply the rate by this after each good step.
    #[arg(long)]
    ramp: Option<f64>,
    /// Ramp: a good step keeps p99 under this (and loses nothing).
    #[arg(long, default_value = "50ms")]
    ramp_p99: String,
    /// Ramp: most steps.
    #[arg(long, default_value_t = 8)]
    ramp_steps: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Another node (`host:port`) of the same cluster for subscribers
    /// (repeatable; round-robin). Publishing stays on --url.
    #[arg(long = "sub-node")]
    sub_nodes: Vec<String>,
    /// Server process id, for CPU and memory (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write an SVG chart here.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Allow a target that is not on a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Instead of running: print the Markdown side-by-side of JSON reports
    /// (ours, then the peer's last; ratios are against the peer).
    #[arg(long, num_args = 2.., value_names = ["OURS", "PEER"])]
    compare: Option<Vec<PathBuf>>,
    /// Name of the server in the report (default: the target's).
    #[arg(long)]
    label: Option<String>,
    /// WebSocket subscribers offer permessage-deflate (and inflate what
    /// comes compressed).
    #[arg(long)]
    ws_compress: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    run(BenchArgs::parse()).await
}

async fn run(args: BenchArgs) -> Result<()> {
    let p99 = humantime::parse_duration(&args.ramp_p99).context("--ramp-p99")?;
    if let Some(files) = &args.compare {
        let read = |p: &PathBuf| -> Result<Report> {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}", p.display()))
        };
        let reports = files.iter().map(read).collect::<Result<Vec<_>>>()?;
        print!(
            "{}",
            report::side_by_side(&reports, p99.as_secs_f64() * 1000.0)
        );
        if let Some(path) = &args.chart {
            report::chart(&reports, path).map_err(anyhow::Error::msg)?;
        }
        return Ok(());
    }
    let base = args.url.trim_end_matches('/');
    let host = url::Url::parse(base).context("--url")?;
    let loopback = match host.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    let remote_node = args.sub_nodes.iter().any(|n| {
        !(n.starts_with("127.") || n.starts_with("localhost:") || n.starts_with("[::1]:"))
    });
    if (!loopback || remote_node) && !args.allow_remote {
        bail!("{base} is not a loopback address; pass --allow-remote to load another machine");
    }
    let mut target = match args.target.as_str() {
        "tidings-sse" | "tidings-ws" => {
            // Tokens name the hub they are for: the one at --url.
            let hub_url = format!("{base}/.well-known/mercure");
            let s = tidings::config::from_process(
                args.config.as_deref(),
                &args.set,
                &[("mercure.hub_url", Some(hub_url))],
            )?;
            let publisher = cli::mint_token(
                &s.mercure,
                &s.mercure.publisher_key,
                s.mercure.algorithm,
                &TokenRequest::everything(),
            )?;
            if args.target == "tidings-sse" {
                Target::tidings_sse(base, &publisher)
            } else {
                let c = &s.centrifugo;
                let token = tidings::auth::jwt::mint(
                    &serde_json::json!({"sub": "bench"}),
                    &c.token_key,
                    c.token_algorithm,
                    false,
                )
                .map_err(anyhow::Error::msg)?;
                let api_key = c.api_key.clone().context(
                    "tidings-ws publishes through the server API: set centrifugo.api_key (--set or TIDINGS_CENTRIFUGO_API_KEY) as on the hub",
                )?;
                Target::tidings_ws(base, &token, &api_key)
            }
        }
        "nchan-sse" => Target::nchan(base, Wire::Sse),
        "nchan-ws" => Target::nchan(base, Wire::WebSocket),
        "custom" => {
            let sub = args.sub_url.clone().context("custom needs --sub-url")?;
            let publish = args.pub_url.clone().context("custom needs --pub-url")?;
            let mut headers = Vec::new();
            for h in &args.headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("--header {h:?}"))?;
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            let ws = sub.starts_with("ws");
            Target {
                name: "custom".into(),
                wire: if ws { Wire::WebSocket } else { Wire::Sse },
                subscribe: if ws {
                    Subscribe::WebSocket {
                        url: sub,
                        init: Vec::new(),
                        ready_replies: 0,
                        pong: false,
                        compress: false,
                    }
                } else {
                    Subscribe::Sse {
                        url: sub,
                        headers: Vec::new(),
                    }
                },
                publish: Publish {
                    url: publish,
                    body: args.pub_body.clone(),
                    headers,
                },
                pids: Vec::new(),
                sub_nodes: Vec::new(),
            }
        }
        other => bail!("unknown --target {other:?}"),
    };
    target.pids = args.pids.clone();
    target.sub_nodes = args.sub_nodes.clone();
    if let Subscribe::WebSocket { compress, .. } = &mut target.subscribe {
        *compress = args.ws_compress;
    }
    if let Some(label) = &args.label {
        target.name = label.clone();
    }
    let scenario = Scenario {
        name: args.scenario.clone(),
        channels: args.channels,
        subscribers: args.subscribers,
        rate: args.rate,
        payload: args.payload,
        duration: humantime::parse_duration(&args.duration).context("--duration")?,
        ramp_factor: args.ramp.filter(|f| *f > 1.0),
        ramp_p99: p99,
        ramp_steps: if args.ramp.is_some() {
            args.ramp_steps
        } else {
            1
        },
        publishers: args.publishers,
    };
    let report = tidings_bench::run(&target, &scenario, !args.quiet).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        report::chart(std::slice::from_ref(&report), path).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
