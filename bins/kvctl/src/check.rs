//! `kvctl check perf` (SPEC section 12): the write load and verdicts of
//! `etcdctl check perf`, on the bench's open-loop load generator.
//!
//! For the load's duration, puts are offered at its rate (256-byte keys,
//! 1 KiB values), each to a free client of the load's clients, as etcdctl
//! does: at most one put in flight per client, a put that finds every
//! client busy waits (and is not made up for later), latency counts from
//! when a client starts it. (`kvctl bench --rate` is the harsher open loop,
//! whose puts start on schedule however many are in flight.) The verdicts
//! are etcd's: throughput above
//! 90 % of the rate, slowest successful request under 500 ms, standard
//! deviation under 100 ms, and no errors. The keys (under `check-perf/`)
//! are deleted afterwards.

use std::time::Duration;

use kv_client::{BatchOp, Client, Options};

use crate::bench::{self, Params};

/// Key prefix of the check's writes.
const PREFIX: &str = "check-perf/";
/// Distinct keys written (each overwritten as the load goes on), so that
/// cleaning up stays quick.
const MAX_KEYS: usize = 50_000;
/// Deletes per cleanup batch.
const CLEANUP_BATCH: usize = 500;

/// A named load: clients and puts per second.
fn load(name: &str) -> Option<(usize, f64)> {
    Some(match name {
        "s" => (50, 150.0),
        "m" => (200, 1_000.0),
        "l" => (500, 8_000.0),
        "xl" => (1_000, 15_000.0),
        _ => return None,
    })
}

/// What the check found: the report lines and whether every verdict
/// passed.
pub struct Verdict {
    /// Lines to print, the last one `PASS` or `FAIL`.
    pub lines: Vec<String>,
    /// Every verdict passed.
    pub ok: bool,
}

/// Runs `check perf` with load `name` for `seconds`.
pub async fn perf(endpoints: &[String], opts: &Options, name: &str, seconds: u64) -> Verdict {
    let Some((clients, rate)) = load(name) else {
        return Verdict {
            lines: vec![format!("FAIL: unknown load {name:?}")],
            ok: false,
        };
    };
    let requests = (rate * seconds as f64).round() as usize;
    let p = Params {
        clients,
        requests,
        value_size: 1024,
        key_size: 256,
        keys: requests.clamp(1, MAX_KEYS),
        rate: Some(rate),
        puts_only: true,
        prefix: PREFIX,
        limited: true,
    };
    let mut lines = vec![format!(
        "check perf --load {name}: {clients} clients, {rate:.0} puts/s for {seconds} s, \
         256-byte keys, 1 KiB values"
    )];
    // etcdctl gives a put no deadline; ours is generous (a put slower
    // than 500 ms fails the check anyway).
    let put_opts = Options {
        timeout: opts.timeout.max(Duration::from_secs(10)),
        ..opts.clone()
    };
    let phase = bench::phase("put", endpoints, &put_opts, &p, true).await;
    let mut ok = true;
    let throughput = phase.ops_per_sec();
    if throughput <= rate * 0.9 {
        lines.push(format!(
            "FAIL: Throughput too low: {} writes/s",
            throughput as u64
        ));
        ok = false;
    } else {
        lines.push(format!(
            "PASS: Throughput is {} writes/s",
            throughput as u64
        ));
    }
    let slowest = phase.slowest_ok().as_secs_f64();
    if slowest > 0.5 {
        lines.push(format!(
            "FAIL: Slowest request took too long: {slowest:.6}s"
        ));
        ok = false;
    } else {
        lines.push(format!("PASS: Slowest request took {slowest:.6}s"));
    }
    let stddev = phase.stddev().as_secs_f64();
    if stddev > 0.1 {
        lines.push(format!("FAIL: Stddev too high: {stddev:.6}s"));
        ok = false;
    } else {
        lines.push(format!("PASS: Stddev is {stddev:.6}s"));
    }
    let errors = phase.errors();
    if !errors.is_empty() {
        ok = false;
        lines.push("FAIL: too many errors".into());
        for (message, n) in errors {
            lines.push(format!("FAIL: ERROR({message}) -> {n}"));
        }
    }
    if let Err(e) = cleanup(endpoints, opts, p.keys).await {
        lines.push(format!(
            "could not delete the check's keys (under {PREFIX}): {e}"
        ));
    }
    lines.push(if ok { "PASS" } else { "FAIL" }.into());
    Verdict { lines, ok }
}

/// Deletes the keys the check wrote.
async fn cleanup(endpoints: &[String], opts: &Options, keys: usize) -> kv_client::Result<()> {
    let client = Client::new(
        endpoints.to_vec(),
        Options {
            timeout: opts.timeout.max(Duration::from_secs(10)),
            ..opts.clone()
        },
    );
    let all: Vec<usize> = (0..keys).collect();
    for chunk in all.chunks(CLEANUP_BATCH) {
        let ops = chunk
            .iter()
            .map(|&i| BatchOp::Delete(bench::key_name(PREFIX, i, 256).into()))
            .collect::<Vec<_>>();
        client.batch(ops).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_are_etcds() {
        assert_eq!(load("s"), Some((50, 150.0)));
        assert_eq!(load("m"), Some((200, 1_000.0)));
        assert_eq!(load("l"), Some((500, 8_000.0)));
        assert_eq!(load("xl"), Some((1_000, 15_000.0)));
        assert_eq!(load("xxl"), None);
    }

    #[test]
    fn cleanup_names_every_written_key() {
        for keys in [1000, 7919] {
            let written: std::collections::BTreeSet<String> = (0..5 * keys)
                .map(|i| bench::key_of(PREFIX, i, keys, 256))
                .collect();
            let deleted: std::collections::BTreeSet<String> =
                (0..keys).map(|n| bench::key_name(PREFIX, n, 256)).collect();
            assert!(written.is_subset(&deleted), "keys = {keys}");
            assert!(written.iter().all(|k| k.len() == 256));
        }
    }
}
