//! kv-engine WAL replay: a whole segment file's bytes through the record
//! parser and the write-batch decoder, as recovery reads them.
//!
//! Checks: a segment accepted as sealed replays the same as the last
//! segment; after replay cut a torn tail off the last segment, the file is
//! clean (replays the same again, also as a sealed segment); the replayed
//! batches re-encoded replay to the same batches.
#![no_main]

use flashkv_fuzz_support::{fixup, fresh_dir, write_file};
use kv_engine::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = fixup::input(data, fixup::engine_wal);
    let dir = fresh_dir("wal");
    let path = write_file(&dir, "000001.log", &bytes);

    let sealed = fuzzing::replay_wal(&path, false);
    let last = fuzzing::replay_wal(&path, true);
    if let Ok(s) = &sealed {
        assert_eq!(last.as_ref().ok(), Some(s), "sealed and last replay differ");
    }
    let Ok(batches) = last else {
        return;
    };
    let again = fuzzing::replay_wal(&path, true).expect("a recovered segment replays again");
    assert_eq!(
        again, batches,
        "a second recovery changed the segment's batches"
    );
    let clean = fuzzing::replay_wal(&path, false).expect("a recovered segment is clean");
    assert_eq!(clean, batches);

    let path2 = write_file(&dir, "000002.log", &fuzzing::encode_wal(&batches));
    let re = fuzzing::replay_wal(&path2, false).expect("re-encoded batches replay");
    assert_eq!(re, batches, "re-encoded batches replay differently");
});
