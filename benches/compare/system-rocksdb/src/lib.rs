//! Bindings to the system RocksDB's C API (`rocksdb/c.h`), generated at build
//! time; a stand-in for crates.io's librocksdb-sys 0.10 that links the
//! installed library (Debian's librocksdb-dev) instead of building RocksDB.

#![allow(clippy::all)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The version of the RocksDB headers the bindings were generated from
/// (`rocksdb/version.h`), e.g. "7.8.3".
pub const SYSTEM_ROCKSDB_VERSION: &str = env!("SYSTEM_ROCKSDB_VERSION");
