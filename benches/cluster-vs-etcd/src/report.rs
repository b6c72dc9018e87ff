//! The table: per profile, each system's medians over the repeats (with the
//! range of throughput), and the ratios FlashKV/etcd taken per repeat (the
//! two systems of one repeat ran back to back) and then their median.

use std::fmt::Write as _;

use crate::load::Stats;

/// The runs of one profile: `flash[i]` and `etcd[i]` are repeat `i`.
pub struct Row {
    pub name: String,
    pub flash: Vec<Stats>,
    pub etcd: Vec<Stats>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        f64::midpoint(v[m - 1], v[m])
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// `12,345`.
fn thousands(x: f64) -> String {
    if x.is_nan() {
        return "–".to_owned();
    }
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "–".to_owned()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

fn ratio(x: f64) -> String {
    if x.is_nan() || x.is_infinite() {
        "–".to_owned()
    } else {
        format!("{x:.2}×")
    }
}

/// Median of `f` over the runs, with its range when there is more than
/// one run.
fn with_range(runs: &[Stats], f: impl Fn(&Stats) -> f64, fmt: fn(f64) -> String) -> String {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let m = median(v.clone());
    if v.len() > 1 {
        let (lo, hi) = range(&v);
        format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi))
    } else {
        fmt(m)
    }
}

fn latencies(runs: &[Stats]) -> String {
    let q = |q: f64| median(runs.iter().map(|s| s.ms(q)).collect());
    let max = median(runs.iter().map(Stats::slowest_ms).collect());
    format!(
        "{} / {} / {} / {}",
        ms(q(0.5)),
        ms(q(0.99)),
        ms(q(0.999)),
        ms(max)
    )
}

fn errors(runs: &[Stats]) -> String {
    let v: Vec<String> = runs.iter().map(|s| thousands(s.errors as f64)).collect();
    if v.iter().all(|e| e == "0") {
        "0".to_owned()
    } else {
        v.join(", ")
    }
}

/// Ratios FlashKV/etcd of `f`, one per repeat.
fn ratios(row: &Row, f: impl Fn(&Stats) -> f64) -> Vec<f64> {
    row.flash
        .iter()
        .zip(&row.etcd)
        .map(|(a, b)| f(a) / f(b))
        .collect()
}

fn ratio_cell(v: &[f64]) -> String {
    let m = median(v.to_vec());
    if v.len() > 1 {
        let (lo, hi) = range(v);
        format!("{} ({}–{})", ratio(m), ratio(lo), ratio(hi))
    } else {
        ratio(m)
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| profile | FlashKV ops/s | FlashKV ms p50 / p99 / p99.9 / max | FlashKV errors \
         | etcd ops/s | etcd ms p50 / p99 / p99.9 / max | etcd errors \
         | FlashKV/etcd ops/s | FlashKV/etcd p99 |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            with_range(&row.flash, Stats::ops_per_s, thousands),
            latencies(&row.flash),
            errors(&row.flash),
            with_range(&row.etcd, Stats::ops_per_s, thousands),
            latencies(&row.etcd),
            errors(&row.etcd),
            ratio_cell(&ratios(row, Stats::ops_per_s)),
            ratio_cell(&ratios(row, |s| s.ms(0.99))),
        );
    }
    out
}

/// Error messages and misses, per row and system, for the lines under the
/// table.
pub fn notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        for (system, runs) in [("FlashKV", &row.flash), ("etcd", &row.etcd)] {
            let misses: u64 = runs.iter().map(|s| s.misses).sum();
            if misses > 0 {
                let _ = writeln!(
                    out,
                    "- {}, {system}: {misses} gets found no value",
                    row.name
                );
            }
            let mut msgs = std::collections::BTreeMap::<&str, u64>::new();
            for s in runs.iter() {
                for (m, n) in &s.messages {
                    *msgs.entry(m).or_default() += n;
                }
            }
            for (m, n) in msgs {
                let _ = writeln!(out, "- {}, {system}: {n} × {m}", row.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(ms(0.123), "0.12");
        assert_eq!(ms(137.4), "137");
        assert_eq!(ratio(2.0), "2.00×");
    }
}
