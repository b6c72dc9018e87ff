//! A one-shot completion that can be blocked on or awaited.
//!
//! The driver runs on a plain thread, so callers on threads block with
//! [`Completion::wait`] / [`Completion::wait_timeout`], and callers in an async
//! runtime `.await` the completion (it is a `Future`; the driver wakes the
//! task). No runtime is needed by this crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

struct Slot<T> {
    value: Option<Result<T>>,
    taken: bool,
    waker: Option<Waker>,
}

struct Inner<T> {
    slot: Mutex<Slot<T>>,
    cond: Condvar,
}

/// The receiving side: resolves once with `Ok(T)` or an [`Error`].
#[must_use = "a completion does nothing unless waited on"]
pub struct Completion<T> {
    inner: Arc<Inner<T>>,
}

/// The sending side, held by the driver. Dropping it unresolved resolves the
/// completion with [`Error::Stopped`].
pub(crate) struct Resolver<T> {
    inner: Option<Arc<Inner<T>>>,
}

/// Creates a connected pair.
pub(crate) fn pair<T>() -> (Resolver<T>, Completion<T>) {
    let inner = Arc::new(Inner {
        slot: Mutex::new(Slot {
            value: None,
            taken: false,
            waker: None,
        }),
        cond: Condvar::new(),
    });
    (
        Resolver {
            inner: Some(inner.clone()),
        },
        Completion { inner },
    )
}

impl<T> Completion<T> {
    /// Blocks the thread until resolved.
    ///
    /// # Errors
    ///
    /// The error the operation failed with.
    pub fn wait(self) -> Result<T> {
        let mut slot = self.inner.slot.lock();
        loop {
            if let Some(v) = slot.value.take() {
                slot.taken = true;
                return v;
            }
            self.inner.cond.wait(&mut slot);
        }
    }

    /// Blocks up to `timeout`. Returns `Err(self)` if still unresolved, so
    /// that the caller may keep waiting.
    ///
    /// # Errors
    ///
    /// `Err(self)` on timeout; `Ok(Err(e))` when the operation failed.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Result<T>, Self> {
        let deadline = Instant::now() + timeout;
        {
            let mut slot = self.inner.slot.lock();
            loop {
                if let Some(v) = slot.value.take() {
                    slot.taken = true;
                    return Ok(v);
                }
                if self.inner.cond.wait_until(&mut slot, deadline).timed_out() {
                    if let Some(v) = slot.value.take() {
                        slot.taken = true;
                        return Ok(v);
                    }
                    break;
                }
            }
        }
        Err(self)
    }

    /// True once resolved (and not yet taken).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.inner.slot.lock().value.is_some()
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.inner.slot.lock();
        if let Some(v) = slot.value.take() {
            slot.taken = true;
            return Poll::Ready(v);
        }
        if slot.taken {
            return Poll::Ready(Err(Error::Stopped));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Resolver<T> {
    /// Resolves the completion; later calls are impossible (consumes self).
    pub(crate) fn resolve(mut self, v: Result<T>) {
        self.set(v);
    }

    fn set(&mut self, v: Result<T>) {
        if let Some(inner) = self.inner.take() {
            let waker = {
                let mut slot = inner.slot.lock();
                slot.value = Some(v);
                slot.waker.take()
            };
            inner.cond.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Drop for Resolver<T> {
    fn drop(&mut self) {
        self.set(Err(Error::Stopped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_then_wait() {
        let (r, c) = pair::<u32>();
        r.resolve(Ok(7));
        assert_eq!(c.wait().unwrap(), 7);
    }

    #[test]
    fn drop_means_stopped() {
        let (r, c) = pair::<u32>();
        drop(r);
        assert!(matches!(c.wait(), Err(Error::Stopped)));
    }

    #[test]
    fn timeout_returns_completion() {
        let (r, c) = pair::<u32>();
        let c = c.wait_timeout(Duration::from_millis(5)).unwrap_err();
        std::thread::spawn(move || r.resolve(Ok(1)));
        assert_eq!(c.wait().unwrap(), 1);
    }
}
