//! The `tidings` binary: `serve`, `publish`, `subscribe`, `token`, `bench`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use tidings::cli::{self, TokenRequest, Update};
use tidings::config::{self, Settings};

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "A real-time hub: Mercure over Server-Sent Events, Centrifugo over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where configuration comes from (shared by every subcommand).
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "TIDINGS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. `--set history.size=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
}

/// `tidings bench`.
#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
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

#[derive(Subcommand)]
enum Command {
    /// Measure a server (tidings or any SSE/WebSocket server): connections,
    /// deliveries, loss, latency, CPU and memory.
    Bench(Box<BenchArgs>),
    /// Run the hub.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on (`listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory for durable history (`data_dir`).
        #[arg(long)]
        data_dir: Option<String>,
        /// History engine: disk or memory (`history.engine`).
        #[arg(long)]
        history: Option<String>,
        /// Log filter, e.g. info or debug (`log.level`).
        #[arg(long)]
        log_level: Option<String>,
        /// Log format: text or json (`log.format`).
        #[arg(long)]
        log_format: Option<String>,
        /// Run the demo ticker and namespace (`demo`; on by default with
        /// the development keys).
        #[arg(long)]
        demo: bool,
    },
    /// Publish an update.
    Publish {
        #[command(flatten)]
        config: ConfigArgs,
        /// Topic (repeat for alternate topics).
        #[arg(long, required = true)]
        topic: Vec<String>,
        /// Payload.
        #[arg(long, default_value = "")]
        data: String,
        /// Only authorized subscribers receive it.
        #[arg(long)]
        private: bool,
        /// Event id.
        #[arg(long)]
        id: Option<String>,
        /// Event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Reconnection delay for clients, in ms.
        #[arg(long)]
        retry: Option<u64>,
        /// Access token (default: one minted from the configured key).
        #[arg(long, env = "TIDINGS_TOKEN")]
        token: Option<String>,
    },
    /// Subscribe and print events as JSON lines.
    Subscribe {
        #[command(flatten)]
        config: ConfigArgs,
        /// Exact topic (repeatable).
        #[arg(long)]
        topic: Vec<String>,
        /// URL Pattern matcher (repeatable).
        #[arg(long)]
        pattern: Vec<String>,
        /// Resume after this event id (or `earliest`).
        #[arg(long)]
        last_event_id: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Access token (default: one minted from the configured key
        /// allowing every topic).
        #[arg(long, env = "TIDINGS_TOKEN")]
        token: Option<String>,
        /// Subscribe anonymously (public updates only).
        #[arg(long)]
        anonymous: bool,
    },
    /// Mint a JWT access token for testing.
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        /// Topic matcher allowed for publishing (repeatable, `*` for all).
        #[arg(long)]
        publish: Vec<String>,
        /// Topic matcher allowed for subscribing (repeatable).
        #[arg(long)]
        subscribe: Vec<String>,
        /// Secret or PEM key to sign with (default: the configured one for
        /// the role, publisher when --publish is given).
        #[arg(long)]
        secret: Option<String>,
        /// Treat matchers as URL patterns.
        #[arg(long)]
        urlpattern: bool,
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// `sub` claim.
        #[arg(long, default_value = "tidings-cli")]
        subject: String,
        /// Pre-standardization token (`mercure` claim).
        #[arg(long)]
        legacy: bool,
    },
}

fn settings(args: &ConfigArgs, flags: &[(&str, Option<String>)]) -> Result<Settings> {
    let mut overrides = Vec::new();
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        overrides.push((k.to_owned(), v.to_owned()));
    }
    for (k, v) in flags {
        if let Some(v) = v {
            overrides.push((k.to_string(), v.clone()));
        }
    }
    let config = config::load(
        args.config.as_deref(),
        |k| std::env::var(k).ok(),
        &overrides,
    )?;
    Ok(config.validate()?)
}

fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn bench(args: BenchArgs) -> Result<()> {
    use tidings::bench::{self, report, Scenario, Target, Wire};
    let p99 = humantime::parse_duration(&args.ramp_p99).context("--ramp-p99")?;
    if let Some(files) = &args.compare {
        let read = |p: &PathBuf| -> Result<bench::Report> {
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
            let s = settings(&args.config, &[("mercure.hub_url", Some(hub_url))])?;
            let publisher = cli::mint_token(
                &s.mercure,
                &s.mercure.publisher_key,
                s.mercure.algorithm,
                &all_topics(),
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
                    tidings::bench::client::Subscribe::WebSocket {
                        url: sub,
                        init: Vec::new(),
                        ready_replies: 0,
                        pong: false,
                        compress: false,
                    }
                } else {
                    tidings::bench::client::Subscribe::Sse {
                        url: sub,
                        headers: Vec::new(),
                    }
                },
                publish: tidings::bench::client::Publish {
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
    if let tidings::bench::client::Subscribe::WebSocket { compress, .. } = &mut target.subscribe {
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
    let report = bench::run(&target, &scenario, !args.quiet).await?;
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

fn all_topics() -> TokenRequest {
    TokenRequest {
        publish: vec!["*".into()],
        subscribe: vec!["*".into()],
        ttl: Duration::from_secs(3600),
        subject: "tidings-cli".into(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
            history,
            log_level,
            log_format,
            demo,
        } => {
            let s = settings(
                &config,
                &[
                    ("demo", demo.then(|| "true".to_owned())),
                    ("listen", listen),
                    ("data_dir", data_dir),
                    ("history.engine", history),
                    ("log.level", log_level),
                    ("log.format", log_format),
                ],
            )?;
            init_logs(&s.log_level, s.log_json);
            if s.mercure.dev_key {
                tracing::warn!(
                    "no Mercure key configured: using the development key {:?} (loopback only). \
                     Set mercure.key (TIDINGS_MERCURE_KEY) in production.",
                    config::DEV_KEY
                );
            }
            let scheme = if s.tls.is_some() { "https" } else { "http" };
            tidings::server::serve(s, tidings::server::shutdown_signal(), |addr| {
                println!("tidings listening on {scheme}://{addr}");
            })
            .await?;
        }
        Command::Publish {
            config,
            topic,
            data,
            private,
            id,
            event_type,
            retry,
            token,
        } => {
            let s = settings(&config, &[])?;
            let token = match token {
                Some(t) => t,
                None => cli::mint_token(
                    &s.mercure,
                    &s.mercure.publisher_key,
                    s.mercure.algorithm,
                    &all_topics(),
                )?,
            };
            let update = Update {
                topics: topic,
                data,
                private,
                id,
                event_type,
                retry,
            };
            let id = cli::publish(s.mercure.hub_url.as_str(), &token, &update).await?;
            println!("{id}");
        }
        Command::Subscribe {
            config,
            topic,
            pattern,
            last_event_id,
            count,
            token,
            anonymous,
        } => {
            let s = settings(&config, &[])?;
            if topic.is_empty() && pattern.is_empty() {
                bail!("give at least one --topic or --pattern");
            }
            let matchers: Vec<(String, String)> = topic
                .into_iter()
                .map(|t| ("match".to_owned(), t))
                .chain(
                    pattern
                        .into_iter()
                        .map(|p| ("match_urlpattern".to_owned(), p)),
                )
                .collect();
            let token = match (token, anonymous) {
                (_, true) => None,
                (Some(t), _) => Some(t),
                (None, false) => Some(cli::mint_token(
                    &s.mercure,
                    &s.mercure.subscriber_key,
                    s.mercure.algorithm,
                    &all_topics(),
                )?),
            };
            cli::subscribe(
                s.mercure.hub_url.as_str(),
                &matchers,
                last_event_id.as_deref(),
                token.as_deref(),
                count,
                |event| {
                    println!("{event}");
                    true
                },
            )
            .await?;
        }
        Command::Bench(args) => bench(*args).await?,
        Command::Token {
            config,
            publish,
            subscribe,
            secret,
            urlpattern,
            ttl,
            subject,
            legacy,
        } => {
            let s = settings(&config, &[])?;
            if publish.is_empty() && subscribe.is_empty() {
                bail!("give at least one --publish or --subscribe matcher");
            }
            let ttl = humantime::parse_duration(&ttl).with_context(|| format!("--ttl {ttl:?}"))?;
            let key = secret.unwrap_or_else(|| {
                if publish.is_empty() {
                    s.mercure.subscriber_key.clone()
                } else {
                    s.mercure.publisher_key.clone()
                }
            });
            let req = TokenRequest {
                publish,
                subscribe,
                urlpattern,
                ttl,
                subject,
                legacy,
            };
            println!(
                "{}",
                cli::mint_token(&s.mercure, &key, s.mercure.algorithm, &req)?
            );
        }
    }
    Ok(())
}
