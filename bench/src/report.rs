//! Run results: the JSON object, the human table, and the self-contained HTML report with
//! hand-written SVG plots (throughput over time, latency percentile curve).
//!
//! Owns: the JSON schema (`target`, `peers`, `depth`, `duration_secs`, `bytes`, `gbps`,
//! `blocks`, `pieces_verified`, `bad_pieces`, `verify_skipped_out_of_order`, `stalled_at_end`, `peers_at_end`, `errors`,
//! `latency_us`, `connect_us`, `churn` (with a join rate), `target_cpu_secs`,
//! `cpu_secs_per_gb`, `timeline`) and how it is drawn.
//! Must never: read the network or the clock; everything comes from merged `Stats`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{ErrorKind, PeersAtEnd, Stalled, Stats};
use crate::RunOptions;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Churn's open-loop arrivals: what was asked for and what happened, counted over the
/// measured window. connect+handshake latency is `RunReport::connect_us`, measured from each
/// arrival's scheduled time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ChurnReport {
    pub join_rate_target_per_sec: f64,
    /// Arrivals that got a slot and dialed, per second of the measured window.
    pub joins_per_sec: f64,
    pub joins_started: u64,
    /// Arrivals dropped because `peers_concurrent_max` peers were already in the swarm.
    pub joins_dropped_at_limit: u64,
    pub peers_concurrent_max: usize,
    /// Peers that fetched their byte budget and left.
    pub sessions_completed: u64,
    pub session_bytes: Option<u64>,
}

/// Above this share of its threads' time busy, the bench says its latencies are its own.
pub const BENCH_BUSY_WARN: f64 = 0.8;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub target: String,
    pub torrents: usize,
    pub peers: usize,
    pub depth: usize,
    pub threads: usize,
    pub pattern: String,
    pub verify: String,
    pub rate_per_sec: Option<f64>,
    pub duration_secs: u64,
    pub bytes: u64,
    pub gbps: f64,
    pub blocks: u64,
    pub pieces_verified: u64,
    pub bad_pieces: u64,
    #[serde(default)]
    pub verify_skipped_out_of_order: u64,
    /// Peers still waiting 1 s or more for the seeder when the run ended, by what for.
    #[serde(default)]
    pub stalled_at_end: Stalled,
    /// Connections held at the end: open, handshaken, served in the measured window.
    #[serde(default)]
    pub peers_at_end: PeersAtEnd,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Percentiles,
    pub connect_us: Percentiles,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_secs_per_gb: Option<f64>,
    /// CPU seconds of the bench's own threads in the measured window, and that as a share
    /// of the time its threads had (duration x threads). Near 1.0 the bench, not the
    /// target, sets the pace: its latencies then include its own queueing.
    #[serde(default)]
    pub bench_cpu_secs: f64,
    #[serde(default)]
    pub bench_busy: f64,
    /// `--spin-us`: polls instead of sleeps within this many us of a timer; the time spent
    /// polling with nothing to do (`bench_spin_secs`) is idle and not counted in bench_busy.
    #[serde(default)]
    pub spin_us: u64,
    #[serde(default)]
    pub bench_spin_secs: f64,
    /// Gb/s in each second of the measured window.
    pub timeline: Vec<f64>,
    /// (percentile, latency us) points for the percentile curve.
    pub latency_curve: Vec<(f64, u64)>,
}

impl RunReport {
    pub fn build(
        opts: &RunOptions,
        threads: usize,
        s: &Stats,
        target_cpu_secs: Option<f64>,
    ) -> RunReport {
        let secs = opts.duration_secs as f64;
        let gbps = s.bytes as f64 * 8.0 / secs / 1e9;
        let gb = s.bytes as f64 / 1e9;
        let mut errors = BTreeMap::new();
        for k in ErrorKind::ALL {
            errors.insert(k.name().to_string(), s.errors[k as usize]);
        }
        let timeline = s
            .timeline_bytes
            .iter()
            .take(opts.duration_secs as usize)
            .map(|b| *b as f64 * 8.0 / 1e9)
            .collect();
        let mut latency_curve = Vec::new();
        if !s.latency_us.is_empty() {
            // Percentiles spaced evenly in "nines": 0, 90, 99, 99.9 ... 99.999.
            for step in 0..=50 {
                let nines = step as f64 / 10.0;
                let q = 1.0 - 10f64.powf(-nines);
                latency_curve.push((q * 100.0, s.latency_us.value_at_quantile(q)));
            }
        }
        RunReport {
            target: opts.target.to_string(),
            torrents: opts.torrents.len(),
            peers: opts.peers,
            depth: opts.depth,
            threads,
            pattern: format!("{:?}", opts.pattern).to_lowercase(),
            verify: format!("{:?}", opts.verify).to_lowercase(),
            rate_per_sec: opts.rate_per_sec,
            duration_secs: opts.duration_secs,
            bytes: s.bytes,
            gbps,
            blocks: s.blocks,
            pieces_verified: s.pieces_verified,
            bad_pieces: s.bad_pieces,
            verify_skipped_out_of_order: s.verify_skipped_out_of_order,
            stalled_at_end: s.stalled_at_end,
            peers_at_end: s.peers_at_end,
            errors,
            latency_us: Percentiles::of(&s.latency_us),
            connect_us: Percentiles::of(&s.connect_us),
            churn: opts.join_rate_per_sec.map(|rate| ChurnReport {
                join_rate_target_per_sec: rate,
                joins_per_sec: s.joins_started as f64 / secs,
                joins_started: s.joins_started,
                joins_dropped_at_limit: s.joins_dropped_at_limit,
                peers_concurrent_max: opts.peers,
                sessions_completed: s.sessions_completed,
                session_bytes: opts.leave_after_bytes,
            }),
            target_cpu_secs,
            cpu_secs_per_gb: target_cpu_secs.filter(|_| gb > 0.0).map(|c| c / gb),
            bench_cpu_secs: s.bench_cpu_secs,
            bench_busy: (s.bench_cpu_secs - s.bench_spin_secs).max(0.0)
                / (secs * threads.max(1) as f64),
            spin_us: opts.spin_us,
            bench_spin_secs: s.bench_spin_secs,
            timeline,
            latency_curve,
        }
    }

    /// The compact human table.
    pub fn human(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "target {}  torrents {}  peers {} x depth {}  threads {}  {}  verify {}  {}",
            self.target,
            self.torrents,
            self.peers,
            self.depth,
            self.threads,
            self.pattern,
            self.verify,
            match self.rate_per_sec {
                Some(r) => format!("open loop {r:.0} req/s"),
                None => "closed loop".into(),
            }
        );
        let _ = writeln!(
            o,
            "throughput   {:>9.2} Gb/s  {:.2} GiB in {} s  {} blocks",
            self.gbps,
            self.bytes as f64 / (1u64 << 30) as f64,
            self.duration_secs,
            self.blocks
        );
        let p = &self.latency_us;
        let _ = writeln!(
            o,
            "latency us   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            p.p50, p.p90, p.p99, p.p999, p.max
        );
        let c = &self.connect_us;
        let _ = writeln!(
            o,
            "connect us   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            c.p50, c.p90, c.p99, c.p999, c.max
        );
        if let Some(c) = &self.churn {
            let _ = writeln!(
                o,
                "churn        joins {:.1}/s (target {:.1}/s)  started {}  dropped at peers_concurrent_max {} {}  sessions completed {}",
                c.joins_per_sec,
                c.join_rate_target_per_sec,
                c.joins_started,
                c.peers_concurrent_max,
                c.joins_dropped_at_limit,
                c.sessions_completed
            );
        }
        let _ = writeln!(
            o,
            "pieces       verified {}  bad {}  skipped (out of order) {}",
            self.pieces_verified, self.bad_pieces, self.verify_skipped_out_of_order
        );
        let mut errs: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let pe = &self.peers_at_end;
        let _ = writeln!(
            o,
            "peers at end {} connected, {} handshaken, {} served in the window",
            pe.connected, pe.handshaken, pe.served
        );
        let st = &self.stalled_at_end;
        if st.total() > 0 {
            errs.push(format!(
                "stalled_at_end {} (waiting >= 1 s for: handshake {} unchoke {} request {})",
                st.total(),
                st.handshake,
                st.unchoke,
                st.request
            ));
        }
        let _ = writeln!(
            o,
            "events       {}",
            if errs.is_empty() {
                "none".into()
            } else {
                errs.join("  ")
            }
        );
        if let (Some(cpu), per_gb) = (self.target_cpu_secs, self.cpu_secs_per_gb) {
            let _ = writeln!(
                o,
                "target cpu   {cpu:.2} s  {} CPU-s/GB",
                per_gb.map(|v| format!("{v:.3}")).unwrap_or("-".into())
            );
        }
        let _ = writeln!(
            o,
            "bench cpu    {:.2} s  {:.0}% of {} thread(s) busy{}",
            self.bench_cpu_secs,
            self.bench_busy * 100.0,
            self.threads,
            if self.spin_us > 0 {
                format!(
                    " (not counting {:.2} s spent polling idle, --spin-us {})",
                    self.bench_spin_secs, self.spin_us
                )
            } else {
                String::new()
            }
        );
        if self.bench_busy >= BENCH_BUSY_WARN {
            let _ = writeln!(
                o,
                "warning      the bench's threads were {:.0}% busy: its latency figures include \
                 its own queueing (give it more cores and --threads)",
                self.bench_busy * 100.0
            );
        }
        o
    }
}

/// A self-contained HTML page for one or more labelled runs.
pub fn html(title: &str, runs: &[(String, RunReport)]) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}</style></head><body><h1>{t}</h1>",
        t = esc(title)
    );
    o.push_str("<table><tr><th>run</th><th>Gb/s</th><th>p50 us</th><th>p99 us</th><th>p99.9 us</th><th>max us</th><th>CPU-s/GB</th><th>bench busy</th><th>verified</th><th>bad</th><th>skipped (out of order)</th><th>stalled at end</th></tr>");
    for (label, r) in runs {
        let st = &r.stalled_at_end;
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(label),
            r.gbps,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.latency_us.max,
            r.cpu_secs_per_gb.map(|v| format!("{v:.3}")).unwrap_or("-".into()),
            r.bench_busy * 100.0,
            r.pieces_verified,
            r.bad_pieces,
            r.verify_skipped_out_of_order,
            st.handshake + st.unchoke + st.request
        );
    }
    o.push_str("</table>");
    if runs.iter().any(|(_, r)| r.churn.is_some()) {
        o.push_str("<h2>Churn (open-loop arrivals)</h2><table><tr><th>run</th><th>joins/s</th><th>target/s</th><th>started</th><th>dropped at limit</th><th>sessions completed</th><th>connect p50 us</th><th>connect p99 us</th></tr>");
        for (label, r) in runs {
            let Some(c) = &r.churn else { continue };
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(label),
                c.joins_per_sec,
                c.join_rate_target_per_sec,
                c.joins_started,
                c.joins_dropped_at_limit,
                c.sessions_completed,
                r.connect_us.p50,
                r.connect_us.p99
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<h2>Throughput over time (Gb/s)</h2>");
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(l, r)| {
            let pts = r
                .timeline
                .iter()
                .enumerate()
                .map(|(i, g)| (i as f64 + 0.5, *g))
                .collect();
            (l.clone(), pts)
        })
        .collect();
    o.push_str(&svg_plot(&series, "seconds", "Gb/s", false));
    o.push_str("<h2>Request latency by percentile (us, log scale)</h2>");
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(l, r)| {
            let pts = r
                .latency_curve
                .iter()
                .enumerate()
                .map(|(i, (_, us))| (i as f64 / 10.0, (*us).max(1) as f64))
                .collect();
            (l.clone(), pts)
        })
        .collect();
    o.push_str(&svg_plot(
        &series,
        "percentile (0 / 90 / 99 / 99.9 / 99.99 / 99.999)",
        "us",
        true,
    ));
    o.push_str("</body></html>\n");
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A line plot: linear x; y linear from 0, or log10 when `log_y`.
fn svg_plot(
    series: &[(String, Vec<(f64, f64)>)],
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> String {
    let (w, h, left, bottom, top, right) = (900.0, 360.0, 60.0, 40.0, 10.0, 170.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = all.clone().map(|p| p.0).fold(1e-9, f64::max);
    let y_of = |v: f64| if log_y { v.max(1.0).log10() } else { v };
    let y_max_raw = all.map(|p| y_of(p.1)).fold(1e-9, f64::max);
    let y_max = if log_y {
        y_max_raw.ceil().max(1.0)
    } else {
        nice_ceil(y_max_raw)
    };
    let sx = |x: f64| left + x / x_max * pw;
    let sy = |y: f64| top + ph - y_of(y) / y_max * ph;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\">"
    );
    let _ = write!(o, "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>");
    for i in 0..=4 {
        let frac = i as f64 / 4.0;
        let y = top + ph - frac * ph;
        let label = if log_y {
            format!("{:.0}", 10f64.powf(frac * y_max))
        } else {
            format!("{:.1}", frac * y_max)
        };
        let _ = write!(
            o,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            left + pw,
            left - 4.0,
            y + 4.0
        );
        let x = left + frac * pw;
        let _ = write!(
            o,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{:.1}</text>",
            top + ph + 14.0,
            frac * x_max
        );
    }
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>",
        left + pw / 2.0,
        h - 6.0,
        esc(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    );
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>",
            path.join(" ")
        );
        let ly = top + 14.0 * (i as f64 + 1.0);
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            left + pw + 10.0,
            ly - 9.0,
            left + pw + 24.0,
            ly,
            esc(label)
        );
    }
    o.push_str("</svg>");
    o
}

fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}
