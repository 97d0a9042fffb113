//! The fault harness: the delivery guarantee, checked under faults.
//!
//! A run starts the real `tidings` binary (one node, or two sharing Redis
//! or NATS), publishers, and clients of every transport (Mercure SSE with
//! `match`, `match_urlpattern` and the legacy `topic`; Centrifugo over
//! WebSocket in JSON and Protobuf, HTTP streaming and SSE with emulation,
//! unidirectional SSE), then plays a random but reproducible schedule of
//! faults (the seed decides it): clients dropping and reconnecting with
//! their position, clients that stop reading or read slowly, publish
//! bursts over the queue bounds, nodes stopped with SIGTERM or killed with
//! SIGKILL and started again, the Redis or NATS server restarted, and
//! thousands of clients of a restarted node coming back at once. At the
//! end it checks one invariant (see `check`) and prints its figures.
//!
//! ```text
//! cargo test --test faults                 # the fixed runs CI makes
//! cargo test --release --test faults -- --scenario disk --seed 7 --duration 30m
//! ```
//!
//! Options: `--scenario NAME` (repeatable; `disk`, `trim`, `memory`,
//! `redis`, `nats`, `storm`), `--seed N`, `--duration 45s`. Redis and NATS
//! scenarios start their own servers (`redis-server`, `nats-server`);
//! without them they are skipped with the reason, except under `CI=true`.

mod check;
mod clients;
mod procs;
mod publish;
mod record;
mod rng;
mod scenario;

use std::process::ExitCode;
use std::time::Duration;

/// The runs made when none is asked for: every scenario, fixed seeds,
/// every fault kind at least once.
const CI_RUNS: [(&str, u64, u64); 6] = [
    ("disk", 1, 60),
    ("trim", 2, 30),
    ("memory", 3, 30),
    ("redis", 4, 40),
    ("nats", 5, 40),
    ("storm", 6, 30),
];

struct Args {
    runs: Vec<(String, u64, Duration)>,
}

fn parse() -> Result<Option<Args>, String> {
    let mut scenarios = Vec::new();
    let (mut seed, mut duration) = (None, None);
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--scenario" => scenarios.push(value()?),
            "--seed" => seed = Some(value()?.parse::<u64>().map_err(|e| e.to_string())?),
            "--duration" => {
                duration = Some(humantime::parse_duration(&value()?).map_err(|e| e.to_string())?)
            }
            // What `cargo test` may pass every test binary.
            "--nocapture" | "--quiet" | "-q" | "--show-output" => {}
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            filter => filters.push(filter.to_owned()),
        }
    }
    // `cargo test some_filter` runs every test binary with the filter: this
    // one runs only when the filter names it.
    if !filters.is_empty() && !filters.iter().any(|f| "faults".contains(f.as_str())) {
        return Ok(None);
    }
    let runs = if scenarios.is_empty() && seed.is_none() && duration.is_none() {
        CI_RUNS
            .iter()
            .map(|&(s, seed, secs)| (s.to_owned(), seed, Duration::from_secs(secs)))
            .collect()
    } else {
        if scenarios.is_empty() {
            scenarios.push("disk".into());
        }
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        let duration = duration.unwrap_or(Duration::from_secs(60));
        scenarios.into_iter().map(|s| (s, seed, duration)).collect()
    };
    Ok(Some(Args { runs }))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::from(2);
        }
    };
    check::self_test();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let scenarios = scenario::all();
    let mut failed = false;
    for (name, seed, duration) in args.runs {
        let Some(s) = scenarios.iter().find(|s| s.name == name) else {
            eprintln!("faults: no scenario {name}");
            return ExitCode::from(2);
        };
        if let Some(why) = s.engine.unavailable() {
            if ci {
                eprintln!("faults: scenario {name} cannot run: {why}, and CI=true requires it");
                failed = true;
            } else {
                println!("faults: scenario {name} skipped: {why}");
            }
            continue;
        }
        println!(
            "faults: scenario {name}, seed {seed}, {}s (replay: cargo test --test faults -- --scenario {name} --seed {seed} --duration {}s)",
            duration.as_secs(),
            duration.as_secs()
        );
        let started = std::time::Instant::now();
        match runtime.block_on(scenario::run(s, seed, duration)) {
            Ok(report) => {
                report.print();
                println!("  took {:.1}s", started.elapsed().as_secs_f64());
                failed |= !report.verdict.violations.is_empty();
            }
            Err(e) => {
                println!("  the run could not complete: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
