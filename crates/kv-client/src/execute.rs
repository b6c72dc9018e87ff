//! Running one request to completion: leader discovery, retries where they
//! are safe, and the definite/unknown bookkeeping (see the crate doc).

use kv_net::proto::{self, ErrorCode, Request, Response, response};
use tokio::time::{Duration, Instant};

use crate::{Client, Error, Kind, Result, retry};

impl Client {
    /// Runs one request to completion: finds the leader, retries what is
    /// safe to retry, and tracks whether any attempt may have applied.
    pub(crate) async fn execute(&self, req: Request, kind: Kind) -> Result<Response> {
        let deadline = Instant::now() + self.inner.opts.timeout;
        self.execute_until(req, kind, deadline).await
    }

    /// [`Client::execute`] within `deadline`.
    pub(crate) async fn execute_until(
        &self,
        req: Request,
        kind: Kind,
        deadline: Instant,
    ) -> Result<Response> {
        if self.inner.endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints".into()));
        }
        let opts = &self.inner.opts;
        let write = kind == Kind::Write;
        let can_retry_unknown = !write || req.client_id != 0;
        let mut maybe_applied = false;
        let mut hints = 0;
        let mut backoff = opts.initial_backoff;
        let mut last = String::from("no attempt finished");
        // The last answer, if it was a definite UNAVAILABLE: what a deadline
        // reached while backing off from it reports.
        let mut unavailable: Option<String> = None;
        // Nodes that left an attempt of this operation unanswered: for one
        // more `attempt_timeout` neither tried again nor followed as a
        // hint (the others are asked meanwhile, and name a new leader once
        // one is elected); after that a node the others still name as
        // leader is tried again (it may be slow rather than gone).
        let mut stalled: Vec<(String, Instant)> = Vec::new();
        loop {
            let now = Instant::now();
            stalled.retain(|(_, at)| now < *at + opts.attempt_timeout);
            let avoid: Vec<String> = stalled.iter().map(|(n, _)| n.clone()).collect();
            if Instant::now() >= deadline {
                tracing::debug!(last, "operation timed out");
                if let Some(message) = unavailable {
                    return Err(Error::Unavailable {
                        message,
                        definite: !maybe_applied,
                    });
                }
                return Err(Error::Timeout {
                    definite: !maybe_applied,
                });
            }
            let target = self
                .leader_guess()
                .filter(|t| !avoid.contains(t))
                .unwrap_or_else(|| self.next_endpoint_but(&avoid));
            let mut pause = false;
            match tokio::time::timeout_at(deadline, self.conn(&target)).await {
                Err(_) => continue,
                Ok(Err(e)) => {
                    last = e.to_string();
                    self.set_leader(None);
                    pause = true;
                }
                Ok(Ok(conn)) => {
                    // The node answers within what is left of our time.
                    let mut attempt = self.stamped(req.clone());
                    let left = deadline.saturating_duration_since(Instant::now());
                    attempt.timeout_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
                    attempt.deadline_unix_ms = unix_ms_after(left);
                    let attempt_deadline = deadline.min(Instant::now() + opts.attempt_timeout);
                    let sent = tokio::time::timeout_at(attempt_deadline, conn.call(attempt)).await;
                    match sent {
                        // The node has not answered in time: leave it, and
                        // try the others while time is left, if a retry is
                        // safe.
                        Err(_) if attempt_deadline < deadline && can_retry_unknown => {
                            tracing::debug!(node = %target, "no answer in time; trying another node");
                            last = format!(
                                "{target} did not answer within {:?}",
                                opts.attempt_timeout
                            );
                            maybe_applied |= write;
                            self.forget_conn(&target);
                            self.set_leader(None);
                            stalled.retain(|(n, _)| *n != target);
                            stalled.push((target.clone(), Instant::now()));
                            continue;
                        }
                        // The deadline passed with the request in flight.
                        Err(_) => {
                            self.set_leader(None);
                            return Err(Error::Timeout {
                                definite: !(write || maybe_applied),
                            });
                        }
                        Ok(Err(
                            e @ (kv_net::Error::FrameTooLarge { .. } | kv_net::Error::Encode(_)),
                        )) => {
                            // Nothing was sent, and no retry can fix it.
                            return Err(
                                Error::InvalidArgument(e.to_string()).unless_applied(maybe_applied)
                            );
                        }
                        Ok(Err(e)) => {
                            self.forget_conn(&target);
                            self.set_leader(None);
                            last = e.to_string();
                            if write && e.outcome_unknown() {
                                maybe_applied = true;
                                if !can_retry_unknown {
                                    return Err(Error::Unavailable {
                                        message: last,
                                        definite: false,
                                    });
                                }
                            }
                            pause = true;
                        }
                        Ok(Ok(resp)) => {
                            let Some(response::Result::Error(e)) = &resp.result else {
                                self.inner.retry.succeeded();
                                if !opts.serializable || write {
                                    self.set_leader(Some(target));
                                }
                                return Ok(resp);
                            };
                            last = e.message.clone();
                            match e.code.enum_value().unwrap_or(ErrorCode::UNKNOWN) {
                                ErrorCode::COMPARE_FAILED => return Ok(resp),
                                ErrorCode::NOT_LEADER => {
                                    if !e.leader_addr.is_empty()
                                        && e.leader_addr != target
                                        && !avoid.contains(&e.leader_addr)
                                        && hints < opts.max_hints
                                    {
                                        hints += 1;
                                        self.set_leader(Some(e.leader_addr.clone()));
                                    } else {
                                        self.set_leader(None);
                                        pause = true;
                                    }
                                }
                                ErrorCode::UNAVAILABLE => {
                                    // Certainly not applied (e.g. the node
                                    // is overloaded): retried after a
                                    // pause, on the same node, which says
                                    // so if it no longer leads, while the
                                    // retry budget lasts.
                                    if !self.inner.retry.refused() {
                                        return Err(Error::Unavailable {
                                            message: last,
                                            definite: !maybe_applied,
                                        });
                                    }
                                    unavailable = Some(last.clone());
                                    pause = true;
                                }
                                ErrorCode::PERMISSION_DENIED => {
                                    return Err(
                                        Error::PermissionDenied(last).unless_applied(maybe_applied)
                                    );
                                }
                                ErrorCode::INVALID_ARGUMENT => {
                                    return Err(
                                        Error::InvalidArgument(last).unless_applied(maybe_applied)
                                    );
                                }
                                _ => {
                                    // TIMEOUT, INTERNAL, unknown codes.
                                    if write && (e.outcome_unknown || !is_known(e)) {
                                        maybe_applied = true;
                                        if !can_retry_unknown {
                                            return Err(Error::Server {
                                                message: last,
                                                definite: false,
                                            });
                                        }
                                    }
                                    pause = true;
                                }
                            }
                        }
                    }
                }
            }
            if pause {
                let wake = Instant::now() + retry::jittered(backoff);
                if wake >= deadline
                    && let Some(message) = unavailable.take()
                {
                    // No retry fits before the deadline.
                    return Err(Error::Unavailable {
                        message,
                        definite: !maybe_applied,
                    });
                }
                let wake = wake.min(deadline);
                tokio::time::sleep_until(wake).await;
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

/// Milliseconds since the Unix epoch, `after` from now (0 if the clock is
/// before the epoch: no deadline by the clock).
fn unix_ms_after(after: Duration) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| {
            u64::try_from((now + after).as_millis()).unwrap_or(u64::MAX)
        })
}

fn is_known(e: &proto::Error) -> bool {
    e.code.enum_value().is_ok()
}
