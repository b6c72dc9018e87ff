//! The one place that maps files into memory.
//!
//! SSTables are read through `mmap`: lookups touch a few cache lines of a
//! block instead of copying whole blocks through `read`. This needs `unsafe`
//! because the kernel could change the mapped bytes under us if another
//! process wrote the file.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use bytes::Bytes;

use crate::error::{IoContext, Result};

/// Maps the whole of `file` read-only and hands it out as `Bytes`, so that
/// slices of it (values) keep the mapping alive after the table is dropped.
///
/// # Errors
///
/// The `mmap` call failed.
pub(crate) fn map_readonly(file: &File, path: &Path) -> Result<Bytes> {
    // SAFETY: only fully written, fsynced, immutable SSTables are mapped
    // (the builder finishes and syncs a table before anything opens it), the
    // engine never writes, truncates or rewrites a table file after that, and
    // the directory is locked against other engine processes. Deleting a
    // table only unlinks it; the mapping stays valid until the last `Bytes`
    // slice of it is dropped.
    let map = unsafe { memmap2::Mmap::map(file) }.ctx(path)?;
    Ok(Bytes::from_owner(map))
}
