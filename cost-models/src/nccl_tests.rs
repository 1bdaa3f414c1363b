//! NVIDIA nccl-tests output (`all_reduce_perf`, `all_gather_perf`,
//! `reduce_scatter_perf`): read into rows, fitted into the step latency
//! (alpha) and bus bandwidth the collective model uses, and written back in
//! the same layout for the model's own predictions (`seerscale comm`).
//!
//! nccl-tests' bus bandwidth is the algorithm bandwidth (`size / time`)
//! times `2(n-1)/n` for all-reduce and `(n-1)/n` for all-gather and
//! reduce-scatter, the ring's share of the buffer each rank moves; `size`
//! is the whole buffer (all-gather's output, reduce-scatter's input).
//! The ring's time is `steps x alpha + share x size / busbw` with `steps`
//! = 2(n-1) or n-1 (`collectives::ring_phase`), so a least-squares line
//! through (size, time) gives both.

use crate::collectives::{Collective, CollectiveFit, Scope};
use crate::quantity::{Bandwidth, Seconds};

#[derive(Debug, thiserror::Error)]
pub enum NcclTestsError {
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: {reason}")]
    Fit { file: String, reason: String },
}

/// One size of an nccl-tests run (its out-of-place columns).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NcclRow {
    pub bytes: u64,
    pub time: Seconds,
    /// GB/s as nccl-tests prints them (1e9 B/s).
    pub algbw_gb_s: f64,
    pub busbw_gb_s: f64,
}

/// A parsed nccl-tests log.
#[derive(Clone, Debug, PartialEq)]
pub struct NcclLog {
    pub collective: Collective,
    pub ranks: usize,
    /// Distinct hosts in its device list.
    pub nodes: usize,
    pub rows: Vec<NcclRow>,
}

/// Bus bandwidth over algorithm bandwidth for `op` over `n` ranks.
pub fn bus_factor(op: Collective, n: usize) -> f64 {
    let n = n.max(1) as f64;
    match op {
        Collective::AllReduce => 2.0 * (n - 1.0) / n,
        Collective::AllGather | Collective::ReduceScatter => (n - 1.0) / n,
        Collective::Broadcast => 1.0,
    }
}

/// Ring steps that pay alpha for `op` over `n` ranks.
pub(crate) fn ring_steps(op: Collective, n: usize) -> f64 {
    let s = n.saturating_sub(1) as f64;
    if op == Collective::AllReduce {
        2.0 * s
    } else {
        s
    }
}

/// nccl-tests' binary name for `op`.
pub fn test_name(op: Collective) -> &'static str {
    match op {
        Collective::AllReduce => "all_reduce_perf",
        Collective::AllGather => "all_gather_perf",
        Collective::ReduceScatter => "reduce_scatter_perf",
        Collective::Broadcast => "broadcast_perf",
    }
}

fn collective_named(text: &str) -> Option<Collective> {
    let t = text.to_ascii_lowercase();
    [Collective::AllReduce, Collective::AllGather, Collective::ReduceScatter, Collective::Broadcast]
        .into_iter()
        .find(|&op| t.contains(test_name(op)) || t.contains(test_name(op).trim_end_matches("_perf")))
}

/// Reads an nccl-tests log. The collective comes from the log (`Collective
/// test starting: ...` or the command line it echoes), else from `file`'s
/// name; ranks and nodes from its `Rank N ... on HOST device` lines; rows
/// from the lines that start with a size. `[0]`-style prefixes (mpirun's
/// output tags) are ignored.
pub fn parse(text: &str, file: &str) -> Result<NcclLog, NcclTestsError> {
    let bad = |reason: String| NcclTestsError::Parse { file: file.to_string(), reason };
    let mut hosts: Vec<String> = Vec::new();
    let mut ranks = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    let mut collective = None;
    for raw in text.lines() {
        let mut line = raw.trim();
        while let Some(rest) = line.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(_, r)| r.trim_start()) {
            line = rest;
        }
        let body = line.trim_start_matches('#').trim();
        if collective.is_none() && (body.contains("Collective test starting") || body.contains("_perf")) {
            collective = collective_named(body);
        }
        if let Some(rest) = body.strip_prefix("Rank") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(r), Some(on)) = (words.first().and_then(|w| w.parse::<usize>().ok()), words.iter().position(|w| *w == "on")) {
                if let Some(host) = words.get(on + 1) {
                    ranks.insert(r);
                    if !hosts.iter().any(|h| h == host) {
                        hosts.push(host.to_string());
                    }
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = body.split_whitespace().collect();
        let Some(bytes) = words.first().and_then(|w| w.parse::<u64>().ok()) else { continue };
        // The out-of-place columns are the first of the two groups of
        // (time, algbw, busbw, #wrong) that end every row.
        if words.len() < 9 {
            continue;
        }
        let g = &words[words.len() - 8..];
        let (Ok(t), Ok(a), Ok(b)) = (g[0].parse::<f64>(), g[1].parse::<f64>(), g[2].parse::<f64>()) else { continue };
        if !(t.is_finite() && t > 0.0) {
            continue;
        }
        rows.push(NcclRow { bytes, time: Seconds(t * 1e-6), algbw_gb_s: a, busbw_gb_s: b });
    }
    let collective = collective.or_else(|| collective_named(file)).ok_or_else(|| {
        bad("no collective named: the log has no `Collective test starting` line or *_perf command, and the file name none of all_reduce, all_gather, reduce_scatter".into())
    })?;
    if ranks.is_empty() {
        return Err(bad("no `Rank N ... on HOST device D` lines: keep nccl-tests' device list in the log".into()));
    }
    if rows.is_empty() {
        return Err(bad("no result rows (lines starting with a size in bytes)".into()));
    }
    Ok(NcclLog { collective, ranks: ranks.len(), nodes: hosts.len(), rows })
}

/// A log fitted into the collective model's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct NcclFitReport {
    pub fit: CollectiveFit,
    pub ranks: usize,
    /// (bytes, measured, fitted) per row.
    pub residuals: Vec<(u64, Seconds, Seconds)>,
}

impl NcclFitReport {
    /// Median and largest |fitted / measured - 1|.
    pub fn error(&self) -> (f64, f64) {
        let mut e: Vec<f64> = self.residuals.iter().map(|(_, m, f)| (f.0 / m.0 - 1.0).abs()).collect();
        e.sort_by(f64::total_cmp);
        (e.get(e.len() / 2).copied().unwrap_or(0.0), e.last().copied().unwrap_or(0.0))
    }
}

/// Fits `time = steps x alpha + share x bytes / busbw` to the log's rows,
/// minimising relative error (sizes span nine decades). Scope: intra-node
/// for one host, inter-node otherwise. Alpha is kept >= 0.
pub fn fit(log: &NcclLog, file: &str) -> Result<NcclFitReport, NcclTestsError> {
    let bad = |reason: String| NcclTestsError::Fit { file: file.to_string(), reason };
    if log.ranks < 2 {
        return Err(bad(format!("{} rank(s): a collective needs at least 2", log.ranks)));
    }
    if log.rows.len() < 2 {
        return Err(bad("one row: a line needs at least two sizes".into()));
    }
    let steps = ring_steps(log.collective, log.ranks);
    let share = bus_factor(log.collective, log.ranks);
    // The line calibrate fits to its own collectives: relative error, no
    // negative latency.
    let points: Vec<(f64, f64)> = log.rows.iter().map(|r| (r.bytes as f64, r.time.0)).collect();
    let (c0, c1) = crate::hardware::calibration::fit_line(&points).ok_or_else(|| bad("time does not grow with size: no bandwidth to fit".into()))?;
    let alpha = Seconds(if steps > 0.0 { c0 / steps } else { 0.0 });
    let busbw = Bandwidth(share / c1);
    let scope = if log.nodes > 1 { Scope::InterNode } else { Scope::IntraNode };
    let residuals = log.rows.iter().map(|r| (r.bytes, r.time, Seconds(c0 + c1 * r.bytes as f64))).collect();
    Ok(NcclFitReport { fit: CollectiveFit { collective: log.collective, scope, alpha, bus_bandwidth: busbw }, ranks: log.ranks, residuals })
}

/// Rows in nccl-tests' layout (out-of-place columns only): the header and
/// one line per row, for the planner's own predictions.
pub fn format_rows(rows: &[NcclRow]) -> Vec<String> {
    let mut out = vec![
        format!("#{:>12} {:>14} {:>10} {:>10} {:>8} {:>8}", "size", "count", "type", "time", "algbw", "busbw"),
        format!("#{:>12} {:>14} {:>10} {:>10} {:>8} {:>8}", "(B)", "(elements)", "", "(us)", "(GB/s)", "(GB/s)"),
    ];
    for r in rows {
        out.push(format!(" {:>12} {:>14} {:>10} {:>10.2} {:>8.2} {:>8.2}", r.bytes, r.bytes / 4, "float", r.time.0 * 1e6, r.algbw_gb_s, r.busbw_gb_s));
    }
    out
}

/// A log in nccl-tests' 2.x layout whose times are the ring model's with
/// `alpha_us` and `busbw_gb_s` (8 B to 8 GiB, doubling): what a fit must
/// give back, for tests and examples.
pub fn synthetic_log(op: Collective, hosts: &[&str], per_host: usize, alpha_us: f64, busbw_gb_s: f64) -> String {
    let n = hosts.len() * per_host;
    let mut s = String::from("# nThread 1 nGpus 1 minBytes 8 maxBytes 8589934592 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0\n#\n# Using devices\n");
    for (h, host) in hosts.iter().enumerate() {
        for d in 0..per_host {
            s += &format!("#  Rank {:2} Group  0 Pid {:6} on {host:>10} device  {d} [0x{:02x}] NVIDIA A100-SXM4-40GB\n", h * per_host + d, 1000 + d, 16 * d);
        }
    }
    s += "#\n#                                                              out-of-place                       in-place          \n";
    s += "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong\n";
    s += "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)       \n";
    let mut bytes = 8u64;
    while bytes <= 8 << 30 {
        let t = ring_steps(op, n) * alpha_us + bus_factor(op, n) * bytes as f64 / (busbw_gb_s * 1e9) * 1e6;
        let algbw = bytes as f64 / (t * 1e-6) / 1e9;
        let busbw = algbw * bus_factor(op, n);
        s += &format!(
            "{bytes:>12} {:>13} {:>9} {:>7} {:>7} {t:>8.2} {algbw:>7.2} {busbw:>7.2} {:>6} {t:>8.2} {algbw:>7.2} {busbw:>7.2} {:>6}\n",
            bytes / 4,
            "float",
            "sum",
            -1,
            0,
            0
        );
        bytes *= 2;
    }
    s += "# Out of bounds values : 0 OK\n# Avg bus bandwidth    : 100.0\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_log_fits_back_to_the_alpha_and_bandwidth_that_wrote_it() {
        for (op, hosts) in
            [(Collective::AllReduce, vec!["node1"]), (Collective::AllGather, vec!["a", "b", "c", "d"]), (Collective::ReduceScatter, vec!["x", "y"])]
        {
            let text = synthetic_log(op, &hosts, 8, 6.5, 180.0);
            let log = parse(&text, &format!("{}.log", test_name(op))).unwrap();
            assert_eq!((log.collective, log.ranks, log.nodes, log.rows.len()), (op, 8 * hosts.len(), hosts.len(), 31));
            let f = fit(&log, "x").unwrap();
            assert!((f.fit.alpha.0 * 1e6 - 6.5).abs() < 0.01, "{op:?}: alpha {} us", f.fit.alpha.0 * 1e6);
            assert!((f.fit.bus_bandwidth.0 / 1e9 - 180.0).abs() < 0.2, "{op:?}: busbw {} GB/s", f.fit.bus_bandwidth.0 / 1e9);
            assert_eq!(f.fit.scope, if hosts.len() > 1 { Scope::InterNode } else { Scope::IntraNode });
            assert!(f.error().1 < 0.01, "{:?}", f.error());
        }
    }

    #[test]
    fn logs_without_what_a_fit_needs_are_named_errors() {
        let text = synthetic_log(Collective::AllReduce, &["n"], 8, 5.0, 100.0);
        // The collective from the file name when the log does not say it.
        let log = parse(&text, "runs/all_gather_perf-8gpu.txt").unwrap();
        assert_eq!(log.collective, Collective::AllGather);
        let no_ranks: String = text.lines().filter(|l| !l.contains("Rank")).collect::<Vec<_>>().join("\n");
        assert!(parse(&no_ranks, "all_reduce.log").unwrap_err().to_string().contains("Rank N"));
        let no_rows: String = text.lines().filter(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
        assert!(parse(&no_rows, "all_reduce.log").unwrap_err().to_string().contains("no result rows"));
        let e = parse(&no_rows, "log.txt").unwrap_err().to_string();
        assert!(e.starts_with("log.txt: no collective named"), "{e}");
        // mpirun's [0] tags are read through.
        let tagged: String = text.lines().map(|l| format!("[0] {l}\n")).collect();
        assert_eq!(parse(&tagged, "all_reduce.log").unwrap().rows.len(), 31);
    }
}
