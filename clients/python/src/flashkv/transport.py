"""Running requests against a cluster: connections, leader discovery, safe
retries, definite vs unknown outcomes (a port of crates/kv-client's
``execute`` to Python threads). :class:`~flashkv.Client` builds the
requests; :class:`Transport` runs them.

- Reads (``get``, ``range``, ``search``, ``similar``, ``status``) are
  retried freely.
- Writes carry this client's random id and a fresh request number; the
  server applies a write at most once per ``(client_id, seq)``, so a write
  is retried with the same number even after an attempt whose outcome is
  unknown (a lost connection, a server timeout).
- ``NOT_LEADER`` answers name the leader's address: the client follows up to
  ``max_hints`` of them per operation, then tries the endpoints in turn with
  jittered backoff.
- ``UNAVAILABLE`` refusals (nothing applied, e.g. an overloaded node) are
  retried only while a client-wide retry budget lasts, as kv-client does.
- ``attempt_timeout`` bounds the wait for one node's answer to one attempt.
  A node that has not answered by then (hung, paused, cut off by a partition
  that drops packets: its connection stays open) is left: its connection is
  dropped, the leader guess cleared, and the operation tried at the other
  nodes, if it may be retried (reads, and writes with de-duplication; a
  write without it raises :class:`UnknownOutcome` instead). For one more
  ``attempt_timeout`` that node is neither picked as the next endpoint nor
  followed as a ``NOT_LEADER`` hint (the others name a new leader once one
  is elected); after that, a node the others still name as leader is tried
  again (it may be slow rather than gone). An abandoned write counts as
  maybe applied.
- ``timeout`` bounds a whole operation, discovery and retries included, and
  each attempt tells the node how long the client still waits.
"""

from __future__ import annotations

import random
import secrets
import ssl
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Optional, Sequence

from . import _proto
from .connection import (
    ConnectFailed,
    Connection,
    ConnectionLost,
    FrameTooLarge,
    NotSent,
)
from .errors import (
    ClientClosed,
    FlashKVError,
    InvalidArgument,
    PermissionDenied,
    Timeout,
    Unavailable,
    UnknownOutcome,
)

# Writes in flight per client: below the server's de-duplication window of
# 1024 request numbers per client (kv-client's MAX_WRITES_IN_FLIGHT).
MAX_WRITES_IN_FLIGHT = 512

_CODE = _proto.ERROR_CODE


class _RetryThrottle:
    """kv-client's retry budget for refusals: 10 tokens, a refusal takes
    one, a success gives 0.1 back, refusals are retried while more than half
    are left."""

    MAX, PER_SUCCESS, PER_REFUSAL = 10_000, 100, 1_000

    def __init__(self) -> None:
        self._tokens = self.MAX
        self._lock = threading.Lock()

    def refused(self) -> bool:
        with self._lock:
            self._tokens = max(0, self._tokens - self.PER_REFUSAL)
            return self._tokens > self.MAX // 2

    def succeeded(self) -> None:
        with self._lock:
            self._tokens = min(self.MAX, self._tokens + self.PER_SUCCESS)


class Transport:
    """The connections of one client and the state that its operations
    share: the leader guess, the request numbering, the retry budget.
    Thread-safe."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float,
        token: Optional[str],
        ssl_context: Optional[ssl.SSLContext],
        connect_timeout: float,
        max_hints: int,
        dedup: bool,
        max_frame_length: int,
        attempt_timeout: float = 1.0,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = float(timeout)
        #: Seconds one attempt waits for a node's answer before the
        #: operation moves on to the other nodes (see the module doc).
        self.attempt_timeout = float(attempt_timeout)
        self._token = token
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._max_hints = max_hints
        self._dedup = dedup
        self._max_frame = max_frame_length
        self.client_id = 0
        while self.client_id == 0:
            self.client_id = secrets.randbits(64)
        self._lock = threading.Lock()
        self._next_seq = 1
        self._next_endpoint = 0
        #: The address taken for the leader's, if any.
        self.leader: Optional[str] = None
        #: Open connections by address.
        self.conns: dict[str, Connection] = {}
        self._closed = False
        self._write_slots = threading.BoundedSemaphore(MAX_WRITES_IN_FLIGHT)
        self._throttle = _RetryThrottle()

    def close(self, join: float) -> None:
        """Closes every connection, waiting up to ``join`` seconds for each
        one's I/O thread; later operations raise :class:`ClientClosed`."""
        with self._lock:
            self._closed = True
            conns = list(self.conns.values())
            self.conns.clear()
        for c in conns:
            c.close(timeout=join)

    def call_once(self, endpoint: str, req: Any, deadline: float) -> Any:
        """One attempt of ``req`` (a read) at ``endpoint``; the response.

        Raises:
            Unavailable: no connection, or it was lost.
            Timeout: no answer by ``deadline``.
        """
        self.stamped(req)
        try:
            conn = self._conn(endpoint, deadline)
            rid, fut = conn.submit(req)
        except (ConnectFailed, NotSent) as e:
            self._forget_conn(endpoint)
            raise Unavailable(str(e)) from None
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            conn.forget(rid)
            raise Timeout(f"{endpoint} did not answer within the timeout") from None
        except ConnectionLost as e:
            self._forget_conn(endpoint, conn)
            raise Unavailable(str(e)) from None

    def stamped(self, req: Any) -> Any:
        if self._token is not None:
            req.token = self._token
        return req

    def _take_seq(self) -> int:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def write(self, req: Any) -> Any:
        """Sends a write with this client's id and a fresh request number;
        the response (its result is the write's own, or a compare failure)."""
        kind = req.WhichOneof("cmd")
        deadline = time.monotonic() + self.timeout
        # The wait for a slot counts towards the timeout; a write that never
        # got one was never sent.
        if not self._write_slots.acquire(timeout=self.timeout):
            raise Timeout(f"{MAX_WRITES_IN_FLIGHT} writes in flight for the whole timeout")
        try:
            if self._dedup:
                req.client_id = self.client_id
                req.seq = self._take_seq()
            resp = self.execute(req, write=True, deadline=deadline)
        finally:
            self._write_slots.release()
        got = resp.WhichOneof("result")
        if got != kind and got != "error":
            # The node answered something else: whether it applied the
            # write cannot be told.
            raise UnknownOutcome(f"unexpected response to {kind}: {got}")
        return resp

    def _pick_target(self, avoid: "set[str] | frozenset[str]" = frozenset()) -> str:
        """The leader guess unless it is in ``avoid``, else the next endpoint
        in turn that is not in ``avoid`` (any, when all are)."""
        with self._lock:
            if self.leader is not None and self.leader not in avoid:
                return self.leader
            first: Optional[str] = None
            for _ in range(len(self.endpoints)):
                ep = self.endpoints[self._next_endpoint % len(self.endpoints)]
                self._next_endpoint += 1
                if ep not in avoid:
                    return ep
                if first is None:
                    first = ep
            assert first is not None
            return first

    def _set_leader(self, addr: Optional[str]) -> None:
        with self._lock:
            self.leader = addr

    def _forget_conn(self, addr: str, failed: "Connection | None" = None) -> None:
        """Drops the connection to ``addr``: ``failed`` only, if given (another
        thread may have replaced it with a healthy one already)."""
        with self._lock:
            conn = self.conns.get(addr)
            if conn is None or (failed is not None and conn is not failed):
                conn = None
            else:
                del self.conns[addr]
        if conn is not None:
            conn.close(timeout=0)

    def _conn(self, addr: str, deadline: float) -> Connection:
        with self._lock:
            if self._closed:
                raise ClientClosed("client is closed")
            c = self.conns.get(addr)
            if c is not None and not c.closed:
                return c
        left = deadline - time.monotonic()
        conn = Connection(
            addr,
            connect_timeout=min(self._connect_timeout, max(left, 0.001)),
            ssl_context=self._ssl,
            max_frame_length=self._max_frame,
        )
        with self._lock:
            other = self.conns.get(addr)
            if self._closed or (other is not None and not other.closed):
                keep = None if self._closed else other
            else:
                self.conns[addr] = conn
                return conn
        conn.close(timeout=0)
        if keep is None:
            raise ClientClosed("client is closed")
        return keep

    def execute(
        self,
        req: Any,
        write: bool,
        serializable: bool = False,
        deadline: Optional[float] = None,
    ) -> Any:
        """Runs one request to completion: finds the leader, retries what is
        safe to retry, and tracks whether any attempt may have applied (a
        port of kv-client's ``execute_until``)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        can_retry_unknown = not write or req.client_id != 0
        maybe_applied = False
        hints = 0
        backoff = 0.02
        last = "no attempt finished"
        # The last answer, if it was a definite UNAVAILABLE: what a deadline
        # reached while backing off from it reports.
        unavailable: Optional[str] = None
        # Nodes that left an attempt of this operation unanswered, with when
        # they were left: for one more attempt_timeout neither tried again
        # nor followed as a hint (the others are asked meanwhile, and name a
        # new leader once one is elected); after that a node the others
        # still name as leader is tried again (it may be slow rather than
        # gone).
        stalled: dict[str, float] = {}

        def failed(cls: type, message: str) -> FlashKVError:
            if maybe_applied:
                return UnknownOutcome(message)
            err: FlashKVError = cls(message)
            return err

        while True:
            now = time.monotonic()
            for node, at in list(stalled.items()):
                if now >= at + self.attempt_timeout:
                    del stalled[node]
            avoid = frozenset(stalled)
            if now >= deadline:
                if unavailable is not None:
                    raise failed(Unavailable, unavailable)
                msg = f"timed out after {self.timeout:g}s; last error: {last}"
                if maybe_applied:
                    raise UnknownOutcome(msg, timed_out=True)
                raise Timeout(msg)
            target = self._pick_target(avoid)
            pause = False
            try:
                conn = self._conn(target, deadline)
            except ConnectFailed as e:
                last = str(e)
                self._set_leader(None)
                pause = True
            else:
                attempt = _proto.Request()
                attempt.CopyFrom(req)
                self.stamped(attempt)
                left = max(deadline - time.monotonic(), 0.0)
                attempt.timeout_ms = max(1, min(int(left * 1000), 0xFFFFFFFF))
                attempt.deadline_unix_ms = int((time.time() + left) * 1000)
                resp = None
                try:
                    rid, fut = conn.submit(attempt)
                except FrameTooLarge as e:
                    # Nothing was sent, and no retry can fix it.
                    raise failed(InvalidArgument, str(e)) from None
                except NotSent as e:
                    self._forget_conn(target, conn)
                    self._set_leader(None)
                    last = str(e)
                    pause = True
                else:
                    attempt_deadline = min(deadline, time.monotonic() + self.attempt_timeout)
                    try:
                        resp = fut.result(timeout=max(0.0, attempt_deadline - time.monotonic()))
                    except FutureTimeout:
                        conn.forget(rid)
                        cut_short = attempt_deadline < deadline
                        if cut_short and can_retry_unknown:
                            # The node has not answered in time: leave it,
                            # and try the others while time is left.
                            last = f"{target} did not answer within {self.attempt_timeout:g}s"
                            maybe_applied |= write
                            self._forget_conn(target, conn)
                            self._set_leader(None)
                            stalled.pop(target, None)
                            stalled[target] = time.monotonic()
                            continue
                        self._set_leader(None)
                        if cut_short:
                            # A write without de-duplication: not retried.
                            msg = f"{target} did not answer within {self.attempt_timeout:g}s"
                        else:
                            # The deadline passed with the request in flight.
                            msg = f"timed out after {self.timeout:g}s waiting for {target}"
                        if write or maybe_applied:
                            raise UnknownOutcome(msg, timed_out=True) from None
                        raise Timeout(msg) from None
                    except ConnectionLost as e:
                        self._forget_conn(target, conn)
                        self._set_leader(None)
                        last = str(e)
                        if write:
                            maybe_applied = True
                            if not can_retry_unknown:
                                raise UnknownOutcome(last) from None
                        pause = True
                if resp is not None:
                    if resp.WhichOneof("result") != "error":
                        self._throttle.succeeded()
                        if write or not serializable:
                            self._set_leader(target)
                        return resp
                    e = resp.error
                    last = f"{target}: {e.message}" if e.message else f"{target}: error {e.code}"
                    code = e.code
                    if code == _CODE["COMPARE_FAILED"]:
                        return resp
                    if code == _CODE["NOT_LEADER"]:
                        if (
                            e.leader_addr
                            and e.leader_addr != target
                            and e.leader_addr not in avoid
                            and hints < self._max_hints
                        ):
                            hints += 1
                            self._set_leader(e.leader_addr)
                        else:
                            self._set_leader(None)
                            pause = True
                    elif code == _CODE["UNAVAILABLE"]:
                        # Certainly not applied (e.g. the node is
                        # overloaded): retried after a pause while the retry
                        # budget lasts.
                        if not self._throttle.refused():
                            raise failed(Unavailable, last)
                        unavailable = last
                        pause = True
                    elif code == _CODE["PERMISSION_DENIED"]:
                        raise failed(PermissionDenied, last)
                    elif code == _CODE["INVALID_ARGUMENT"]:
                        raise failed(InvalidArgument, last)
                    else:
                        # TIMEOUT, INTERNAL, unknown codes.
                        known = code in _proto.ERROR_NAME
                        if write and (e.outcome_unknown or not known):
                            maybe_applied = True
                            if not can_retry_unknown:
                                raise UnknownOutcome(last)
                        pause = True
            if pause:
                wake = time.monotonic() + backoff * random.uniform(0.5, 1.0)
                if wake >= deadline and unavailable is not None:
                    # No retry fits before the deadline.
                    raise failed(Unavailable, unavailable)
                time.sleep(max(0.0, min(wake, deadline) - time.monotonic()))
                backoff = min(backoff * 2, 0.25)
