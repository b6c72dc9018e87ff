//! kv-server's encoding of the commands in raft log entries and of their
//! outcomes (`command::Command::decode`, `command::Outcome::decode`): entry
//! data arrives from peers and from the log on disk.
//!
//! Checks: whatever decodes re-encodes to bytes that decode to the same
//! value.
#![no_main]

use kv_server::command::{Command, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::decode(data) {
        let again = Command::decode(&c.encode()).expect("a re-encoded command decodes");
        assert_eq!(again, c);
    }
    if let Ok(o) = Outcome::decode(data) {
        let again = Outcome::decode(&o.encode()).expect("a re-encoded outcome decodes");
        assert_eq!(again, o);
    }
});
