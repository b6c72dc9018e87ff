//! The files of an index directory: `CURRENT` naming the live generation,
//! the generations' engine databases `gen-NNNNNN/` and their graph files
//! `gen-NNNNNN.graph`, all written durably (temporary file, fsync, rename,
//! fsync of the directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) const CURRENT: &str = "CURRENT";

pub(crate) fn gen_dir(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("gen-{generation:06}"))
}

/// The graph file of `generation` ([`SearchIndex::save_graph`]).
pub(crate) fn graph_path(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("gen-{generation:06}.graph"))
}

pub(crate) fn parse_gen(name: &str) -> Option<u64> {
    let n = name.strip_prefix("gen-")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Generations present under `root`.
pub(crate) fn list_gens(root: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(root, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        if let Some(g) = entry.file_name().to_str().and_then(parse_gen) {
            out.push(g);
        }
    }
    Ok(out)
}

pub(crate) fn remove_gens_except(root: &Path, keep: &[u64]) -> Result<()> {
    for g in list_gens(root)? {
        if !keep.contains(&g) {
            let d = gen_dir(root, g);
            std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
    }
    // Graph files of other generations, and any left half-written.
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(root, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match name.strip_suffix(".graph") {
            Some(g) => parse_gen(g).is_some_and(|g| !keep.contains(&g)),
            None => name.ends_with(".graph.tmp"),
        };
        if stale {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// `bytes` to `path` durably: a temporary file, fsync, rename, fsync of
/// the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Points `CURRENT` at `generation`: temp file, fsync, rename, fsync dir.
pub(crate) fn write_current(root: &Path, generation: u64) -> Result<()> {
    write_durably(
        &root.join(CURRENT),
        format!("gen-{generation:06}\n").as_bytes(),
    )
}

pub(crate) fn read_current(root: &Path) -> Result<Option<u64>> {
    let cur = root.join(CURRENT);
    match std::fs::read(&cur) {
        Ok(b) => Ok(std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.strip_suffix('\n'))
            .and_then(parse_gen)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&cur, e)),
    }
}
