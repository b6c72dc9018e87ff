//! The markdown tables: ops/s per engine per workload with kv-engine's ratio
//! to the best peer, per-op latency percentiles, and the targets.

use std::collections::HashMap;
use std::fmt::Write;

use crate::engines::is_peer;
use crate::workloads::{Cell, Rate};

/// Workloads whose per-op latency is shown.
const POINT: &[&str] = &[
    "fillrandom",
    "readrandom",
    "readmissing",
    "fillsync1",
    "fillsyncN",
];

pub struct Report<'a> {
    pub engines: &'a [&'a str],
    pub workloads: &'a [&'a str],
    pub cells: &'a HashMap<(String, String), Cell>,
    pub sync_threads: usize,
}

fn label(w: &str, threads: usize) -> String {
    match w {
        "fillsyncN" => format!("fillsync ({threads} threads)"),
        "fillsync1" => "fillsync (1 thread)".into(),
        "fdatasync" => "raw disk: write 116 B + fdatasync".into(),
        "seekrandom" => "seekrandom (+100 next)".into(),
        "fullscan" => "fullscan (all keys in order, compacted; keys/s)".into(),
        "readwhilewriting" => "readwhilewriting (reader)".into(),
        "space" => "space: dir / live data (lower is better)".into(),
        w => w.into(),
    }
}

fn ops(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

impl Report<'_> {
    fn cell(&self, e: &str, w: &str) -> Option<&Cell> {
        self.cells.get(&(e.to_string(), w.to_string()))
    }

    /// The comparable number of a cell: ops/s, or the space ratio.
    fn value(&self, e: &str, w: &str) -> Option<f64> {
        match self.cell(e, w)? {
            Cell::Rate(r) => Some(r.per_sec()),
            Cell::Space { ratio, .. } => Some(*ratio),
            Cell::Failed(_) => None,
        }
    }

    /// The best peer on workload `w`: highest rate, or lowest space ratio.
    fn best_peer(&self, w: &str) -> Option<(&str, f64)> {
        let lower_better = w == "space";
        self.engines
            .iter()
            .filter(|e| is_peer(e))
            .filter_map(|e| Some((*e, self.value(e, w)?)))
            .reduce(|a, b| {
                let b_wins = if lower_better { b.1 < a.1 } else { b.1 > a.1 };
                if b_wins { b } else { a }
            })
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let t = self.sync_threads;
        let _ = writeln!(
            s,
            "| workload | {} | kv-engine / best peer |",
            self.engines.join(" | ")
        );
        let _ = writeln!(s, "|---|{}---|", "---:|".repeat(self.engines.len()));
        for w in self.workloads {
            let mut row = format!("| {} |", label(w, t));
            for e in self.engines {
                let c = match self.cell(e, w) {
                    None => "–".to_string(),
                    Some(Cell::Rate(r)) => ops(r.per_sec()),
                    Some(Cell::Space {
                        ratio, compacted, ..
                    }) if *compacted => format!("{ratio:.2}"),
                    Some(Cell::Space { ratio, .. }) => {
                        format!("{ratio:.2} (no compaction)")
                    }
                    Some(Cell::Failed(_)) => "FAILED".to_string(),
                };
                let _ = write!(row, " {c} |");
            }
            let ratio = match (self.value("kv-engine", w), self.best_peer(w)) {
                (Some(kv), Some((peer, best))) if *w != "fdatasync" => {
                    format!("{:.2}× ({peer})", kv / best)
                }
                _ => "–".into(),
            };
            let _ = writeln!(s, "{row} {ratio} |");
        }
        self.latency_table(&mut s);
        self.notes(&mut s);
        self.targets(&mut s);
        s
    }

    fn latency_table(&self, s: &mut String) {
        let points: Vec<&&str> = self
            .workloads
            .iter()
            .filter(|w| POINT.contains(w))
            .collect();
        if points.is_empty() {
            return;
        }
        let _ = writeln!(s, "\nPer-op latency, p50 / p99 (µs):\n");
        let _ = writeln!(s, "| workload | {} |", self.engines.join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(self.engines.len()));
        for w in points {
            let mut row = format!("| {} |", label(w, self.sync_threads));
            for e in self.engines {
                let c = match self.cell(e, w) {
                    Some(Cell::Rate(Rate { hist: Some(h), .. })) => format!(
                        "{} / {}",
                        micros(h.value_at_quantile(0.5)),
                        micros(h.value_at_quantile(0.99))
                    ),
                    Some(Cell::Failed(_)) => "FAILED".into(),
                    _ => "–".into(),
                };
                let _ = write!(row, " {c} |");
            }
            let _ = writeln!(s, "{row}");
        }
    }

    fn notes(&self, s: &mut String) {
        let mut notes = Vec::new();
        for e in self.engines {
            for w in self.workloads {
                match self.cell(e, w) {
                    Some(Cell::Rate(Rate { note: Some(n), .. })) => {
                        notes.push(format!("{e} {w}: {n}"))
                    }
                    Some(Cell::Failed(m)) => notes.push(format!("{e} {w} FAILED: {m}")),
                    Some(Cell::Space {
                        bytes,
                        closed_bytes,
                        ..
                    }) => notes.push(format!(
                        "{e} space: {:.1} MiB on disk while open, {:.1} MiB after close",
                        *bytes as f64 / 1048576.0,
                        *closed_bytes as f64 / 1048576.0
                    )),
                    _ => {}
                }
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in notes {
                let _ = writeln!(s, "- {n}");
            }
        }
    }

    fn targets(&self, s: &mut String) {
        if !self.engines.contains(&"kv-engine") {
            return;
        }
        let mut lines = Vec::new();
        let vs_best = |w: &str, want: f64| -> Option<String> {
            let kv = self.value("kv-engine", w)?;
            let (peer, best) = self.best_peer(w)?;
            let r = kv / best;
            Some(format!(
                "{w} ≥ {want}× best peer: {r:.2}× ({peer}) {}",
                if r >= want { "MET" } else { "not met" }
            ))
        };
        lines.extend(vs_best("readrandom", 1.5));
        if let Some(kv) = self.value("kv-engine", "readrandom") {
            lines.push(format!(
                "readrandom ≥ 1,000,000 ops/s: {} {}",
                ops(kv),
                if kv >= 1e6 { "MET" } else { "not met" }
            ));
        }
        lines.extend(vs_best("fillrandom", 1.5));
        lines.extend(vs_best("seekrandom", 1.5));
        lines.extend(vs_best("readmissing", 1.5));
        let one = self.value("kv-engine", "fillsync1");
        if let (Some(one), Some(many)) = (one, self.value("kv-engine", "fillsyncN")) {
            let r = many / one;
            lines.push(format!(
                "fillsync {} threads ≥ 4× 1 thread: {r:.2}× {}",
                self.sync_threads,
                if r >= 4.0 { "MET" } else { "not met" }
            ));
        }
        if let (Some(one), Some(raw)) = (one, self.value("kv-engine", "fdatasync")) {
            let r = one / raw;
            lines.push(format!(
                "fillsync 1 thread within 10% of raw fdatasync: {r:.2}× of raw {}",
                if r >= 0.9 { "MET" } else { "not met" }
            ));
        }
        if let Some(r) = self.value("kv-engine", "space") {
            lines.push(format!(
                "space after overwrite + compact ≤ 1.3× live: {r:.2}× {}",
                if r <= 1.3 { "MET" } else { "not met" }
            ));
        }
        if !lines.is_empty() {
            let _ = writeln!(s, "\nIssue 3 targets (kv-engine):");
            for l in lines {
                let _ = writeln!(s, "- {l}");
            }
        }
    }
}
