//! Sorted string tables: immutable files of sorted internal keys.
//!
//! ```text
//! [data block][crc32] ... [bloom filter][crc32] [index block][crc32] [footer]
//! footer = bloom_off u64 | bloom_len u64 | index_off u64 | index_len u64
//!          | entries u64 | crc32 of the previous 40 bytes u32 | magic u64
//! ```
//! Index entries map the last key of each data block to `offset u64 | len u32`.
//! Every block's checksum is verified the first time it is read.
//!
//! Format `FlashKV3` (written now) allows zero padding of less than 4 KiB
//! before a data block, so that blocks can start at page boundaries (see
//! [`crate::Options::block_align`]), and places data-block restart points
//! only where a user key begins. `FlashKV2` tables (contiguous blocks,
//! restart points anywhere) are still read.

mod block;
pub(crate) mod bloom;
mod builder;
mod table;

pub use builder::TableBuilder;
pub(crate) use table::TableIter;
pub use table::{Table, TableMeta};

pub(crate) const MAGIC: u64 = 0x466c_6173_684b_5633; // "FlashKV3"
/// Contiguous data blocks, restart points anywhere: still read.
pub(crate) const MAGIC_V2: u64 = 0x466c_6173_684b_5632; // "FlashKV2"
/// The earlier format (no restart-key prefixes in block trailers), named in
/// the error when such a table is opened.
pub(crate) const MAGIC_V1: u64 = 0x466c_6173_684b_5631; // "FlashKV1"
pub(crate) const FOOTER_LEN: usize = 5 * 8 + 4 + 8;

/// Data blocks never cross more 4 KiB pages than their size needs when
/// they start on a page boundary; the padding before one is less than this.
pub(crate) const PAGE: u64 = 4096;
