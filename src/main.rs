//! The `tidings` binary: `serve`, `publish`, `subscribe`, `token`, `bench`.

use std::path::PathBuf;

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

#[derive(Subcommand)]
enum Command {
    /// Measure a server (tidings or any SSE/WebSocket server): runs the
    /// load generator, `tidings-bench`, installed beside this binary. Its
    /// options: `tidings bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
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
    Ok(config::from_process(
        args.config.as_deref(),
        &args.set,
        flags,
    )?)
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

/// `tidings bench`: the load generator is its own crate (the server does
/// not compile its charts and histograms); this runs its binary, built
/// beside this one.
fn bench(args: Vec<std::ffi::OsString>) -> Result<()> {
    let exe = std::env::current_exe().context("where is this binary")?;
    let bench = exe.with_file_name(format!("tidings-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.exists() {
        bail!(
            "{} is not built: `cargo build --release --workspace` builds it beside tidings \
             (or run it directly: `cargo run --release -p tidings-bench -- …`)",
            bench.display()
        );
    }
    let status = std::process::Command::new(&bench)
        .args(args)
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    std::process::exit(status.code().unwrap_or(1));
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
                    &TokenRequest::everything(),
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
                    &TokenRequest::everything(),
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
        Command::Bench { args } => bench(args)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `tidings bench …` hands every argument to `tidings-bench` as given,
    /// options and `--help` included.
    #[test]
    fn bench_arguments_pass_through_unchanged() {
        let given = ["--quiet", "--set", "k=v", "-c", "f.toml", "--help"];
        let cli = Cli::try_parse_from(["tidings", "bench"].into_iter().chain(given))
            .expect("tidings bench parses");
        let Command::Bench { args } = cli.command else {
            panic!("not the bench command");
        };
        assert_eq!(args, given.map(std::ffi::OsString::from));
    }
}
