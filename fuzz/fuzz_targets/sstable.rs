//! kv-engine tables: open (footer, index, bloom filter), point lookups and
//! a full scan of arbitrary bytes, through the functions reads and
//! compactions use on a memory-mapped file.
//!
//! Checks: lookups and seeks of every scanned entry return without
//! panicking, and a second scan reads the same; when the scan yields valid
//! internal keys in strictly ascending order, the same entries written with
//! the table builder read back whole, and every one of them is found by a
//! point lookup and by a seek.
#![no_main]

use flashkv_fuzz_support::{fixup, fresh_dir, write_file};
use kv_engine::fuzzing;
use libfuzzer_sys::fuzz_target;

/// Entries probed with lookups and seeks, and most rebuilt; bounds the time
/// one input takes.
const MAX_PROBES: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let bytes = fixup::input(data, fixup::table);
    let dir = fresh_dir("sstable");
    let path = write_file(&dir, "000001.sst", &bytes);
    let Ok(table) = fuzzing::open_table(&path) else {
        return;
    };
    let scan = fuzzing::scan_table(&table);
    let Ok(entries) = scan else {
        // Lookups on a table with a damaged block still must not panic.
        for probe in [&b""[..], b"a", b"\xff\xff\xff\xff"] {
            let _ = fuzzing::get_table(&table, probe, u64::MAX >> 8);
            let _ = fuzzing::seek_table(&table, probe);
        }
        return;
    };
    for (k, _) in entries.iter().take(MAX_PROBES) {
        let _ = fuzzing::seek_table(&table, k);
        if let Some((uk, seq, _)) = fuzzing::parse_internal_key(k) {
            let _ = fuzzing::get_table(&table, uk, seq);
        }
    }
    let second = fuzzing::scan_table(&table).expect("a table that scanned once scans again");
    assert_eq!(second, entries, "two scans of one table differ");

    let well_formed = entries.len() <= MAX_PROBES
        && entries
            .iter()
            .all(|(k, _)| fuzzing::parse_internal_key(k).is_some())
        && entries
            .windows(2)
            .all(|w| fuzzing::internal_key_less(&w[0].0, &w[1].0));
    if !well_formed {
        return;
    }
    let rebuilt_path = dir.join("000002.sst");
    let meta = fuzzing::build_table(&rebuilt_path, &entries).expect("rebuild the table");
    assert_eq!(meta.entries, entries.len() as u64);
    let rebuilt = fuzzing::open_table(&rebuilt_path).expect("open the rebuilt table");
    let back = fuzzing::scan_table(&rebuilt).expect("scan the rebuilt table");
    assert_eq!(back, entries, "the rebuilt table reads back differently");
    let mut prev: Option<(&[u8], u64)> = None;
    for (k, v) in &entries {
        let (uk, seq, put) = fuzzing::parse_internal_key(k).expect("checked above");
        let got = fuzzing::get_table(&rebuilt, uk, seq).expect("lookup in the rebuilt table");
        // A lookup at a sequence finds the first of the entries sharing it
        // (a put and a delete of one key at one sequence).
        if prev != Some((uk, seq)) {
            assert_eq!(
                got,
                Some((put, v.clone())),
                "lookup of {k:?} in the rebuilt table"
            );
        }
        prev = Some((uk, seq));
        let sought = fuzzing::seek_table(&rebuilt, k).expect("seek in the rebuilt table");
        assert_eq!(sought.as_ref().map(|(sk, _)| sk), Some(k), "seek of {k:?}");
    }
});
