//! kv-engine manifest replay: `CURRENT` naming a manifest of the fuzzed
//! bytes, read as open reads it.
//!
//! Checks: every version edit re-encodes to an edit that decodes equal; a
//! recovered version written back as the one edit every open writes
//! recovers to the same version.
#![no_main]

use flashkv_fuzz_support::{MANIFEST_NAME, NUM_LEVELS, fixup, fresh_dir, write_file};
use kv_engine::fuzzing::{self, VersionEdit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = fixup::input(data, fixup::engine_records);
    if let Ok(payloads) = fuzzing::manifest_records(&bytes) {
        for p in payloads {
            if let Some(e) = VersionEdit::decode(&p) {
                assert_eq!(VersionEdit::decode(&e.encode()).as_ref(), Some(&e));
            }
        }
    }

    let dir = fresh_dir("manifest");
    write_file(&dir, "CURRENT", format!("{MANIFEST_NAME}\n").as_bytes());
    write_file(&dir, MANIFEST_NAME, &bytes);
    let Ok(v) = fuzzing::recover_manifest(&dir, NUM_LEVELS) else {
        return;
    };
    assert!(
        fuzzing::manifest_records(&bytes).is_ok(),
        "recovery accepted a manifest whose records do not parse"
    );
    let base = VersionEdit {
        log_number: Some(v.log_number),
        next_file: Some(v.next_file),
        last_seq: Some(v.last_seq),
        deleted: Vec::new(),
        added: v
            .levels
            .iter()
            .enumerate()
            .flat_map(|(l, ts)| ts.iter().map(move |t| (l, t.clone())))
            .collect(),
    };
    fuzzing::write_manifest(&dir, 2, &base).expect("write the base edit");
    let again = fuzzing::recover_manifest(&dir, NUM_LEVELS).expect("the base edit recovers");
    assert_eq!(again, v, "the version written back recovers differently");
});
