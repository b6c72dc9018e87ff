//! Fault injection at the engine's durable-write steps, for tests.
//!
//! With the `failpoints` feature each point is a [`fail`] failpoint of the
//! same name (`fail::cfg("wal-sync", "return")` makes it fail, as TiKV and
//! raft-engine do); the error is an I/O error naming the file. Unit tests
//! also fail a point on one thread only (`FAIL_POINT`), which needs no
//! global state. Without either, [`check`] does nothing.
//!
//! Points: `wal-create`, `wal-write`, `wal-sync`, `table-write`,
//! `table-sync`, `manifest-write`, `manifest-sync`, `current-rename`,
//! `dir-sync`.

use std::path::Path;

use crate::error::{Error, Result};

#[cfg(test)]
thread_local! {
    /// The named point fails on this thread.
    pub(crate) static FAIL_POINT: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

/// Fails with an injected I/O error on `path` when point `name` is set.
///
/// # Errors
///
/// The injected error.
#[allow(unused_variables)]
pub(crate) fn check(name: &str, path: &Path) -> Result<()> {
    #[cfg(test)]
    if FAIL_POINT.with(|p| p.borrow().as_deref() == Some(name)) {
        return Err(injected(name, path));
    }
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| Err(injected(name, path)));
    Ok(())
}

#[allow(dead_code)]
fn injected(name: &str, path: &Path) -> Error {
    Error::io(
        path,
        std::io::Error::other(format!("injected failure at {name}")),
    )
}
