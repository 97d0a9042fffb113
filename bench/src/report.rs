//! What a run reports: a table for people, JSON for scripts, SVG charts,
//! and a Markdown side-by-side of two targets with their ratios.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::Received;
use crate::procstat::Usage;
use crate::{Scenario, Target, Wire};

/// One run: connections, memory, and one [`Step`] per publishing rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Target name.
    pub target: String,
    /// `sse` or `websocket`.
    pub wire: String,
    /// Scenario name.
    pub scenario: String,
    /// Channels × subscribers per channel.
    pub channels: usize,
    /// Subscribers per channel.
    pub subscribers_per_channel: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Connections established.
    pub connections: usize,
    /// Connections that failed, and the first reasons.
    pub connect_failures: usize,
    /// A few failure messages.
    pub failure_samples: Vec<String>,
    /// Seconds to open every connection.
    pub connect_wall_s: f64,
    /// Connect time percentiles, ms.
    pub connect_p50_ms: f64,
    /// p99.
    pub connect_p99_ms: f64,
    /// max.
    pub connect_max_ms: f64,
    /// Server resident memory before connecting, bytes.
    pub server_rss_idle: u64,
    /// With every connection open.
    pub server_rss_connected: u64,
    /// (connected − idle) / connections.
    pub rss_per_connection: f64,
    /// The bench's own resident memory, bytes.
    pub bench_rss: u64,
    /// The bench's CPU seconds over the whole run.
    pub bench_cpu_seconds: f64,
    /// Publishing steps (one, or a ramp).
    pub steps: Vec<Step>,
}

/// One publishing rate's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Offered publications per second.
    pub rate: f64,
    /// Seconds spent publishing.
    pub publish_s: f64,
    /// Publications accepted by the server.
    pub published: u64,
    /// Publications per second actually achieved (below `rate` when the
    /// server answers publishes too slowly).
    pub achieved_rate: f64,
    /// Deliveries the subscribers should have received.
    pub expected: u64,
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries received twice.
    pub duplicates: u64,
    /// Deliveries that arrived after a later one.
    pub reordered: u64,
    /// Distinct deliveries per second of publishing.
    pub deliveries_per_s: f64,
    /// Latency percentiles, ms.
    pub latency_p50_ms: f64,
    /// p90.
    pub latency_p90_ms: f64,
    /// p99.
    pub latency_p99_ms: f64,
    /// p99.9.
    pub latency_p999_ms: f64,
    /// max.
    pub latency_max_ms: f64,
    /// (quantile, ms) for charts.
    pub latency_curve: Vec<(f64, f64)>,
    /// Bytes read by subscribers per delivery (framing overhead included).
    pub bytes_per_delivery: f64,
    /// Server CPU seconds during the step.
    pub server_cpu_s: f64,
    /// Server CPU seconds per million deliveries.
    pub server_cpu_s_per_million: f64,
    /// Bench CPU seconds during the step.
    pub bench_cpu_s: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    /// A report with the connection phase filled in.
    pub fn new(
        target: &Target,
        scenario: &Scenario,
        connections: usize,
        failures: &[String],
        connect_wall: Duration,
        connect: &Histogram<u64>,
    ) -> Report {
        Report {
            target: target.name.clone(),
            wire: match target.wire {
                Wire::Sse => "sse".into(),
                Wire::WebSocket => "websocket".into(),
            },
            scenario: scenario.name.clone(),
            channels: scenario.channels,
            subscribers_per_channel: scenario.subscribers,
            payload: scenario.payload,
            connections,
            connect_failures: failures.len(),
            failure_samples: failures.iter().take(3).cloned().collect(),
            connect_wall_s: connect_wall.as_secs_f64(),
            connect_p50_ms: ms(connect.value_at_quantile(0.5)),
            connect_p99_ms: ms(connect.value_at_quantile(0.99)),
            connect_max_ms: ms(connect.max()),
            server_rss_idle: 0,
            server_rss_connected: 0,
            rss_per_connection: 0.0,
            bench_rss: 0,
            bench_cpu_seconds: 0.0,
            steps: Vec::new(),
        }
    }

    /// Records memory before and after connecting.
    pub fn set_memory(&mut self, idle: Usage, connected: Usage, bench: Usage) {
        self.server_rss_idle = idle.rss_bytes;
        self.server_rss_connected = connected.rss_bytes;
        self.rss_per_connection = connected.rss_bytes.saturating_sub(idle.rss_bytes) as f64
            / self.connections.max(1) as f64;
        self.bench_rss = bench.rss_bytes;
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} over {} — {}: {} channels × {} subscribers, {} B payload",
            self.target,
            self.wire,
            self.scenario,
            self.channels,
            self.subscribers_per_channel,
            self.payload
        );
        let _ = writeln!(
            out,
            "  connections {} (failed {}) in {:.2} s; connect p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            self.connections, self.connect_failures, self.connect_wall_s, self.connect_p50_ms, self.connect_p99_ms, self.connect_max_ms
        );
        for f in &self.failure_samples {
            let _ = writeln!(out, "  failure: {f}");
        }
        let _ = writeln!(
            out,
            "  server memory {:.1} MiB idle → {:.1} MiB connected: {:.0} B per connection; bench {:.1} MiB, {:.2} CPU s",
            self.server_rss_idle as f64 / 1048576.0,
            self.server_rss_connected as f64 / 1048576.0,
            self.rss_per_connection,
            self.bench_rss as f64 / 1048576.0,
            self.bench_cpu_seconds
        );
        if !self.steps.is_empty() {
            let _ = writeln!(
                out,
                "  {:>9} {:>9} {:>10} {:>10} {:>6} {:>5} {:>5} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7}",
                "rate/s", "achieved", "expected", "received", "lost", "dup", "reord", "deliv/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "B/deliv", "cpu s/M", "bench s"
            );
        }
        for s in &self.steps {
            let _ = writeln!(
                out,
                "  {:>9.0} {:>9.0} {:>10} {:>10} {:>6} {:>5} {:>5} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.1} {:>9.2} {:>7.2}",
                s.rate, s.achieved_rate, s.expected, s.received, s.lost, s.duplicates, s.reordered, s.deliveries_per_s,
                s.latency_p50_ms, s.latency_p90_ms, s.latency_p99_ms, s.latency_p999_ms, s.latency_max_ms,
                s.bytes_per_delivery, s.server_cpu_s_per_million, s.bench_cpu_s
            );
        }
        out
    }

    /// The last good step of a ramp (the knee), if any.
    pub fn knee(&self, bound_ms: f64) -> Option<&Step> {
        self.steps.iter().take_while(|s| s.good(bound_ms)).last()
    }
}

impl Step {
    /// Nothing lost, p99 under `bound_ms`, and the offered rate achieved
    /// (within 10 %): the server kept up.
    pub fn good(&self, bound_ms: f64) -> bool {
        self.lost == 0 && self.latency_p99_ms < bound_ms && self.achieved_rate >= 0.9 * self.rate
    }

    /// Sums what the subscribers received against what was published.
    pub fn measure(
        rate: f64,
        publish_wall: Duration,
        expected_per_channel: &[u64],
        received: &[(usize, Received)],
        server_cpu_s: f64,
        bench_cpu_s: f64,
    ) -> Step {
        let mut latencies = super::accounting::latency_histogram();
        let (mut expected, mut got, mut lost, mut dup, mut reord, mut bytes) = (0, 0, 0, 0, 0, 0);
        for (channel, r) in received {
            let want = expected_per_channel.get(*channel).copied().unwrap_or(0);
            expected += want;
            got += r.tally.received;
            lost += r.tally.lost(want);
            dup += r.tally.duplicates;
            reord += r.tally.reordered;
            bytes += r.bytes;
            for us in &r.latencies {
                let _ = latencies.record(u64::from(*us));
            }
        }
        let distinct = got - dup;
        let q = |q: f64| ms(latencies.value_at_quantile(q));
        Step {
            rate,
            publish_s: publish_wall.as_secs_f64(),
            published: expected_per_channel.iter().sum(),
            achieved_rate: expected_per_channel.iter().sum::<u64>() as f64
                / publish_wall.as_secs_f64().max(1e-9),
            expected,
            received: got,
            lost,
            duplicates: dup,
            reordered: reord,
            deliveries_per_s: distinct as f64 / publish_wall.as_secs_f64().max(1e-9),
            latency_p50_ms: q(0.5),
            latency_p90_ms: q(0.9),
            latency_p99_ms: q(0.99),
            latency_p999_ms: q(0.999),
            latency_max_ms: ms(latencies.max()),
            latency_curve: [
                0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
            ]
            .iter()
            .map(|&p| (p, q(p)))
            .collect(),
            bytes_per_delivery: bytes as f64 / distinct.max(1) as f64,
            server_cpu_s,
            server_cpu_s_per_million: server_cpu_s / (distinct.max(1) as f64 / 1e6),
            bench_cpu_s,
        }
    }
}

/// Writes an SVG chart: latency by percentile for each report's last good
/// step (or its only step), and, for ramps, deliveries/s against the
/// offered rate.
pub fn chart(reports: &[Report], path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(480);
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let max_ms = reports
        .iter()
        .flat_map(|r| r.steps.first())
        .flat_map(|s| s.latency_curve.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let mut latency = ChartBuilder::on(&left)
        .caption("latency by percentile (first step)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..100.0f64, 0.0..max_ms * 1.1)
        .map_err(|e| e.to_string())?;
    latency
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, r) in reports.iter().enumerate() {
        let Some(step) = r.steps.first() else {
            continue;
        };
        let color = colors[i % colors.len()];
        latency
            .draw_series(LineSeries::new(
                step.latency_curve.iter().map(|(q, v)| (q * 100.0, *v)),
                color,
            ))
            .map_err(|e| e.to_string())?
            .label(format!("{} {}", r.target, r.wire))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    let max_rate = reports
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.rate))
        .fold(1.0f64, f64::max);
    let max_deliveries = reports
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.deliveries_per_s))
        .fold(1.0f64, f64::max);
    let mut throughput = ChartBuilder::on(&right)
        .caption("deliveries/s by offered rate", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate * 1.1, 0.0..max_deliveries * 1.1)
        .map_err(|e| e.to_string())?;
    throughput
        .configure_mesh()
        .x_desc("publications/s")
        .y_desc("deliveries/s")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, r) in reports.iter().enumerate() {
        let color = colors[i % colors.len()];
        throughput
            .draw_series(LineSeries::new(
                r.steps.iter().map(|s| (s.rate, s.deliveries_per_s)),
                color,
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The step a report is judged by: its last good one, or, when none was
/// good, its first, marked as such.
fn shown(r: &Report, p99_bound_ms: f64) -> Option<(&Step, &'static str)> {
    match r.knee(p99_bound_ms) {
        Some(s) => Some((s, "")),
        None => r.steps.first().map(|s| (s, " (bound not met)")),
    }
}

/// A Markdown section comparing reports of the same scenario and wire:
/// one row each, then the ratios the targets are about, of every report
/// against the last one (the peer).
pub fn side_by_side(reports: &[Report], p99_bound_ms: f64) -> String {
    let mut out = String::new();
    let (Some(peer), Some(first)) = (reports.last(), reports.first()) else {
        return out;
    };
    let _ = writeln!(
        out,
        "#### {} — {} ({} channels × {} subscribers, {} B)\n",
        first.scenario, first.wire, first.channels, first.subscribers_per_channel, first.payload
    );
    let _ = writeln!(
        out,
        "| server | connections | memory/conn | best deliveries/s (p99 < {p99_bound_ms} ms) | p50 ms | p99 ms | lost | dup | reordered | B/delivery | server CPU s / M deliveries | bench CPU s |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    // Memory per connection means something only on a fresh server with
    // idle connections (the connect-only scenario).
    let memory = |r: &Report| {
        if r.steps.is_empty() {
            format!("{:.0} B", r.rss_per_connection)
        } else {
            "–".to_owned()
        }
    };
    let shown = |r| shown(r, p99_bound_ms);
    for r in reports {
        let row = shown(r);
        let (dps, p50, p99, lost, dup, reord, bpd, cpu) =
            row.map_or((0.0, 0.0, 0.0, 0, 0, 0, 0.0, 0.0), |(s, _)| {
                (
                    s.deliveries_per_s,
                    s.latency_p50_ms,
                    s.latency_p99_ms,
                    s.lost,
                    s.duplicates,
                    s.reordered,
                    s.bytes_per_delivery,
                    s.server_cpu_s_per_million,
                )
            });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0}{} | {:.2} | {:.2} | {} | {} | {} | {:.1} | {:.2} | {:.2} |",
            r.target,
            r.connections,
            memory(r),
            dps,
            row.map_or("", |(_, mark)| mark),
            p50,
            p99,
            lost,
            dup,
            reord,
            bpd,
            cpu,
            r.bench_cpu_seconds
        );
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        }
    };
    let _ = writeln!(out);
    for ours in &reports[..reports.len() - 1] {
        match (shown(ours), shown(peer)) {
            (Some((o, _)), Some((p, _))) => {
                let _ = writeln!(
                    out,
                    "Ratios {} / {}: deliveries/s {}, p99 latency {}, server CPU per delivery {}.\n",
                    ours.target,
                    peer.target,
                    ratio(o.deliveries_per_s, p.deliveries_per_s),
                    ratio(o.latency_p99_ms, p.latency_p99_ms),
                    ratio(o.server_cpu_s_per_million, p.server_cpu_s_per_million),
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "Ratios {} / {}: memory per connection {}.\n",
                    ours.target,
                    peer.target,
                    ratio(ours.rss_per_connection, peer.rss_per_connection)
                );
            }
        }
    }
    out
}
