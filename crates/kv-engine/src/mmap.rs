//! The one place that maps files into memory.
//!
//! SSTables are read through `mmap`: lookups touch a few cache lines of a
//! block instead of copying whole blocks through `read`. This needs `unsafe`
//! because the kernel could change the mapped bytes under us if another
//! process wrote the file.
//!
//! WAL segments are written through a read-write mapping of blocks reserved
//! ahead with `fallocate`: an unsynced write is then a memory copy into the
//! page cache instead of a `write` system call (about a fifth of the time of
//! a small unsynced put when it was a `write`).
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
pub(crate) fn map_readonly(file: &File, path: &Path, huge_pages: bool) -> Result<Bytes> {
    // SAFETY: only fully written, fsynced, immutable SSTables are mapped
    // (the builder finishes and syncs a table before anything opens it), the
    // engine never writes, truncates or rewrites a table file after that, and
    // the directory is locked against other engine processes. Deleting a
    // table only unlinks it; the mapping stays valid until the last `Bytes`
    // slice of it is dropped.
    let map = unsafe { memmap2::Mmap::map(file) }.ctx(path)?;
    // Read back after eviction, the file comes in 2 MiB folios too (see the
    // table builder's `ChunkWriter`); only a hint, so its failure is not an
    // error.
    #[cfg(target_os = "linux")]
    if huge_pages {
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = huge_pages;
    Ok(Bytes::from_owner(map))
}

/// Drops this process's mappings of the whole pages of `table[range]`, so
/// that a table read once from start to end (a compaction input) does not
/// stay resident in the process: without it a compaction of gigabytes of
/// input counts gigabytes of file pages towards the process's resident set
/// until the inputs are unmapped. The pages stay in the page cache; touching
/// them again maps them back, with the same bytes. A failure is ignored: it
/// only leaves the pages mapped.
pub(crate) fn release(table: &Bytes, range: std::ops::Range<usize>) {
    let page = rustix::param::page_size();
    let base = table.as_ptr() as usize;
    let start = (base + range.start.min(table.len())).next_multiple_of(page);
    let end = (base + range.end.min(table.len())) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: `table` is the whole of a read-only shared file mapping made by
    // `map_readonly` (mmap returns it page-aligned), and [start, end) is a
    // page-aligned part of it. MADV_DONTNEED on a shared file mapping only
    // drops page-table entries: the mapping stays valid, and the next access
    // faults the same bytes back in from the file, which the engine never
    // changes (see `map_readonly`). So every `Bytes` slice of the table still
    // reads what it read before.
    let _ = unsafe {
        rustix::mm::madvise(
            start as *mut std::ffi::c_void,
            end - start,
            rustix::mm::Advice::LinuxDontNeed,
        )
    };
}

/// Maps the first `len` bytes of a WAL segment read-write.
///
/// # Errors
///
/// The `mmap` call failed.
pub(crate) fn map_wal(file: &File, path: &Path, len: u64) -> Result<memmap2::MmapMut> {
    let len = usize::try_from(len).map_err(|_| {
        crate::error::Error::io(path, std::io::Error::other("WAL mapping too large"))
    })?;
    // SAFETY: the segment was created by this process with `create_new` in a
    // directory locked against other engine processes, and its blocks were
    // reserved with `fallocate` up to at least `len` before mapping, so on
    // file systems that honour the reservation (ext4, xfs) touching the pages
    // cannot hit a hole: no SIGBUS on a full disk. (Copy-on-write file
    // systems such as btrfs with snapshots may still need space on the first
    // write of a page; a full disk there ends the process with SIGBUS instead
    // of an error.) The engine never shortens the file while this mapping
    // exists: `Wal` truncates it only after dropping the mapping. As for
    // tables, another process truncating or rewriting the file behind the
    // engine's back is outside what the directory lock can prevent.
    unsafe { memmap2::MmapOptions::new().len(len).map_mut(file) }.ctx(path)
}
