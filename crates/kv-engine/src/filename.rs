//! Names of the files in a database directory.

use std::path::{Path, PathBuf};

pub(crate) const LOCK: &str = "LOCK";
pub(crate) const CURRENT: &str = "CURRENT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Wal(u64),
    Table(u64),
    Manifest(u64),
    Temp,
}

pub(crate) fn wal(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.log"))
}

pub(crate) fn table(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.sst"))
}

pub(crate) fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:06}")
}

pub(crate) fn parse(name: &str) -> Option<FileKind> {
    if name.ends_with(".tmp") {
        return Some(FileKind::Temp);
    }
    if let Some(n) = name.strip_prefix("MANIFEST-") {
        return n.parse().ok().map(FileKind::Manifest);
    }
    if let Some(n) = name.strip_suffix(".log") {
        return n.parse().ok().map(FileKind::Wal);
    }
    if let Some(n) = name.strip_suffix(".sst") {
        return n.parse().ok().map(FileKind::Table);
    }
    None
}

/// fsyncs a directory so that creations, renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    if let Err(crate::Error::Io { source, .. }) = crate::fault::check("dir-sync", dir) {
        return Err(source);
    }
    std::fs::File::open(dir)?.sync_all()
}
