"""The FlashKV client's API (:class:`Client`): it builds the requests and
reads the answers; :class:`~flashkv.transport.Transport` runs them (leader
discovery, retries, definite vs unknown outcomes)."""

from __future__ import annotations

import ssl
import time
from typing import Any, Iterable, Optional, Sequence, Union

from . import _proto
from .connection import DEFAULT_MAX_FRAME_LENGTH, split_endpoint
from .errors import (
    FlashKVError,
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
    Unavailable,
)
from .transport import Transport
from .types import BatchOp, BytesLike, CasResult, Delete, NodeStatus, Put, as_bytes

_CODE = _proto.ERROR_CODE

_ROLES = {
    "ROLE_LEADER": "leader",
    "ROLE_FOLLOWER": "follower",
    "ROLE_CANDIDATE": "candidate",
    "ROLE_PRE_CANDIDATE": "pre-candidate",
    "ROLE_LEARNER": "learner",
}


class Client:
    """A client of a FlashKV cluster; safe to share between threads.

    Requests from many threads are pipelined on one connection per node.

    Args:
        endpoints: ``"host:port"`` addresses of some nodes (a list, or one
            string of comma-separated addresses). Any node will do: the
            client finds the leader by itself.
        timeout: Seconds that bound each operation, discovery and retries
            included.
        attempt_timeout: Longest wait, in seconds, for a node's answer to
            one attempt (default 1). A node that has not answered by then
            (hung, paused, cut off by a partition that drops packets: its
            connection stays open) is left: its connection is dropped and
            the operation tried at the other nodes, which know the new
            leader once one is elected; for one more ``attempt_timeout``
            the client neither picks that node nor follows hints naming it,
            then tries it again if the others still name it as leader (it
            may just be slow). Only operations that may be retried move on:
            reads, and writes with ``dedup``; a write without it raises
            :class:`UnknownOutcome`. ``timeout`` still bounds the whole
            operation. Raise it for requests a healthy node may take longer
            to answer (very large batches or ranges).
        token: Sent with every request to nodes that check tokens
            (``kvd --auth-file``).
        cacert: CA certificate file (PEM): use TLS and trust this CA.
        cert: Client certificate file (PEM), for nodes that require one.
        key: The client certificate's private key file (PEM).
        ssl_context: A ready :class:`ssl.SSLContext` instead of the three
            above.
        connect_timeout: Bound on one connect (and TLS handshake).
        max_hints: Not-leader hints followed per operation before trying
            the endpoints in turn.
        dedup: Let the server de-duplicate writes (on by default), so that a
            write whose outcome is unknown can be retried safely. Without
            it such a write raises :class:`UnknownOutcome` at once.

    Raises:
        InvalidArgument: no endpoints, one that is not ``host:port``, or a
            ``timeout`` or ``attempt_timeout`` that is not positive.

    Example::

        with flashkv.Client(["127.0.0.1:7001", "127.0.0.1:7002"]) as c:
            c.put("user:1", "Jane")
            assert c.get("user:1") == b"Jane"
    """

    def __init__(
        self,
        endpoints: Union[Sequence[str], str],
        timeout: float = 5.0,
        token: Optional[str] = None,
        *,
        attempt_timeout: float = 1.0,
        cacert: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        connect_timeout: float = 1.0,
        max_hints: int = 8,
        dedup: bool = True,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        eps = [e.strip() for e in endpoints if e.strip()]
        if not eps:
            raise InvalidArgument("no endpoints")
        for e in eps:
            try:
                split_endpoint(e)
            except ValueError as err:
                raise InvalidArgument(str(err)) from None
        if timeout <= 0:
            raise InvalidArgument("timeout must be positive")
        if attempt_timeout <= 0:
            raise InvalidArgument("attempt_timeout must be positive")
        if (cert is None) != (key is None):
            raise InvalidArgument("cert and key go together")
        if ssl_context is None and (cacert is not None or cert is not None):
            ssl_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cacert)
            if cert is not None:
                ssl_context.load_cert_chain(cert, key)
        self._t = Transport(
            eps,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            token=token,
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            max_hints=max_hints,
            dedup=dedup,
            max_frame_length=max_frame_length,
        )

    # ------------------------------------------------------------ lifetime ---

    def close(self) -> None:
        """Closes every connection (and waits, bounded, for their I/O
        threads). Operations in flight fail; later ones raise
        :class:`ClientClosed`. Closing twice is fine."""
        self._close(join=2.0)

    def _close(self, join: float) -> None:
        self._t.close(join)

    def __del__(self) -> None:
        # A client dropped without close() does not leave its connections
        # (and their I/O threads) behind.
        try:
            self._close(join=0)
        except Exception:  # noqa: BLE001 - nothing to do at collection time
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"flashkv.Client({self._t.endpoints!r}, timeout={self._t.timeout}, "
            f"attempt_timeout={self._t.attempt_timeout})"
        )

    @property
    def endpoints(self) -> list[str]:
        """The endpoints given at construction."""
        return list(self._t.endpoints)

    @property
    def client_id(self) -> int:
        """This client's id for write de-duplication (random, non-zero)."""
        return self._t.client_id

    @property
    def leader(self) -> Optional[str]:
        """The address the client currently takes for the leader's."""
        return self._t.leader

    # ------------------------------------------------------------ writes ---

    def put(self, key: BytesLike, value: BytesLike) -> None:
        """Sets ``key`` to ``value``.

        Raises:
            FlashKVError: see :attr:`FlashKVError.definite`.
        """
        req = _proto.Request()
        req.put.key = as_bytes(key)
        req.put.value = as_bytes(value, "value")
        self._t.write(req)

    def delete(self, key: BytesLike) -> None:
        """Removes ``key`` (an absent key is fine).

        Raises:
            FlashKVError: see :attr:`FlashKVError.definite`.
        """
        req = _proto.Request()
        req.delete.key = as_bytes(key)
        self._t.write(req)

    def cas(
        self, key: BytesLike, expected: Optional[BytesLike], value: BytesLike
    ) -> CasResult:
        """Compare-and-swap: sets ``key`` to ``value`` if its value is
        ``expected`` (``None``: if the key is absent).

        Returns:
            A :class:`CasResult`, true when swapped; on a mismatch false,
            with the current value. A compare failure is never reported for
            a cas whose earlier attempt may have taken effect: retries carry
            the same request number and the server answers a retry with the
            first attempt's outcome.

        Raises:
            FlashKVError: see :attr:`FlashKVError.definite`.
        """
        req = _proto.Request()
        req.cas.key = as_bytes(key)
        req.cas.expect_absent = expected is None
        if expected is not None:
            req.cas.expected = as_bytes(expected, "expected")
        req.cas.new_value = as_bytes(value, "value")
        resp = self._t.write(req)
        if resp.WhichOneof("result") == "error":
            e = resp.error
            return CasResult(False, bytes(e.current) if e.current_present else None)
        return CasResult(True)

    def batch(self, ops: Iterable[BatchOp]) -> None:
        """Applies ``ops`` atomically: all of them or none.

        Each op is a :class:`Put` / :class:`Delete`, or a tuple
        ``("put", key, value)`` / ``("delete", key)``.

        Raises:
            FlashKVError: see :attr:`FlashKVError.definite`.
            TypeError: an op of another kind (nothing is sent).
        """
        req = _proto.Request()
        req.batch.SetInParent()
        for op in ops:
            o = req.batch.ops.add()
            if isinstance(op, Put):
                o.put.key, o.put.value = as_bytes(op.key), as_bytes(op.value, "value")
            elif isinstance(op, Delete):
                o.delete.key = as_bytes(op.key)
            elif isinstance(op, (tuple, list)) and len(op) == 3 and op[0] == "put":
                o.put.key, o.put.value = as_bytes(op[1]), as_bytes(op[2], "value")
            elif isinstance(op, (tuple, list)) and len(op) == 2 and op[0] == "delete":
                o.delete.key = as_bytes(op[1])
            else:
                raise TypeError(f"not a batch op: {op!r}")
        self._t.write(req)

    # ------------------------------------------------------------ reads ---

    def get(self, key: BytesLike, serializable: bool = False) -> Optional[bytes]:
        """The value of ``key``, ``None`` when absent.

        Linearizable unless ``serializable`` (a possibly stale read that any
        node serves from its own copy).

        Raises:
            FlashKVError: reads never change anything, so every failure is
                definite.
        """
        req = _proto.Request()
        req.get.key = as_bytes(key)
        req.get.serializable = serializable
        resp = self._t.execute(req, write=False, serializable=serializable)
        if resp.WhichOneof("result") != "get":
            raise ProtocolError(f"unexpected response to get: {resp.WhichOneof('result')}")
        return bytes(resp.get.value) if resp.get.found else None

    def range(
        self,
        start: BytesLike = b"",
        end: BytesLike = b"",
        limit: int = 0,
        prefix: Optional[BytesLike] = None,
        keys_only: bool = False,
        reverse: bool = False,
        serializable: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """The pairs with keys in ``[start, end)`` (empty ``end``: no upper
        bound) that begin with ``prefix``, ascending, at most ``limit`` of
        them (0: all).

        Fetched page by page; the whole scan is bounded by the client's
        timeout, and a range larger than one page is not one atomic
        snapshot. ``keys_only`` returns empty values. ``reverse`` gives
        descending order (the last ``limit`` keys of the range): the wire
        protocol scans ascending only, so it reads the whole range and
        reverses it here.

        Raises:
            FlashKVError: every failure of a read is definite.
        """
        if limit < 0:
            raise InvalidArgument("limit must not be negative")
        deadline = time.monotonic() + self._t.timeout
        out: list[tuple[bytes, bytes]] = []
        want = 0 if reverse else limit
        q = _proto.Request()
        q.range.start = as_bytes(start, "start")
        q.range.end = as_bytes(end, "end")
        if prefix is not None:
            q.range.prefix = as_bytes(prefix, "prefix")
        q.range.keys_only = keys_only
        q.range.serializable = serializable
        while True:
            if want:
                q.range.limit = min(want - len(out), 0xFFFFFFFF)
            resp = self._t.execute(q, write=False, serializable=serializable, deadline=deadline)
            if resp.WhichOneof("result") != "range":
                raise ProtocolError(f"unexpected response to range: {resp.WhichOneof('result')}")
            pairs = resp.range.pairs
            out.extend((bytes(kv.key), bytes(kv.value)) for kv in pairs)
            if not resp.range.more or not pairs or (want and len(out) >= want):
                break
            q.range.start = bytes(pairs[-1].key) + b"\0"
        if reverse:
            out.reverse()
        if limit:
            del out[limit:]
        return out

    def search(
        self,
        query: str,
        prefix: BytesLike = b"",
        limit: int = 0,
        serializable: Optional[bool] = None,
    ) -> list[tuple[bytes, float]]:
        """Keys whose value contains every word of ``query`` (Unicode
        words, case folded), best first by BM25 score (ties by key), with
        their scores; only keys starting with ``prefix`` (empty: all), at
        most ``limit`` of them (0: the server's default, 100; the server
        answers at most 1000). A value that is not UTF-8 or has no word is
        never found.

        Served by nodes started with ``kvd --search``. Linearizable (it
        reflects every write acknowledged before it began) unless
        ``serializable`` (a possibly stale answer from the node's own
        index). ``None`` is linearizable too: unlike kv-client, this client
        has no client-wide ``serializable`` option to fall back on.

        Raises:
            InvalidArgument: ``query`` has no word (the server says so), or
                ``limit`` is negative.
            Unavailable: no node could serve it; a node without ``--search``
                says "search is not enabled on this node (kvd --search)".
            FlashKVError: every failure of a read is definite.
            TypeError: ``query`` is not a ``str`` (nothing is sent).
        """
        req = _proto.Request()
        req.search.query = _text(query, "query")
        req.search.prefix = as_bytes(prefix, "prefix")
        req.search.limit = _count(limit, "limit")
        req.search.serializable = bool(serializable)
        return self._search_call(req, "search", req.search.serializable)

    def similar(
        self,
        text: str,
        prefix: BytesLike = b"",
        top_k: int = 0,
        serializable: Optional[bool] = None,
    ) -> list[tuple[bytes, float]]:
        """The ``top_k`` keys (0: the server's default, 10; at most 1000)
        whose values are nearest in meaning to ``text``, best first (ties by
        key), with their cosine similarity in [-1, 1]; only keys starting
        with ``prefix`` (empty: all). As :meth:`search` otherwise.

        Raises:
            InvalidArgument: ``text`` has no word (the server says so), or
                ``top_k`` is negative.
            Unavailable: as for :meth:`search`.
            FlashKVError: every failure of a read is definite.
            TypeError: ``text`` is not a ``str`` (nothing is sent).
        """
        req = _proto.Request()
        req.similar.text = _text(text, "text")
        req.similar.prefix = as_bytes(prefix, "prefix")
        req.similar.top_k = _count(top_k, "top_k")
        req.similar.serializable = bool(serializable)
        return self._search_call(req, "similar", req.similar.serializable)

    def status(self, endpoint: Optional[str] = None) -> NodeStatus:
        """The status of the node at ``endpoint`` (one attempt), or, without
        one, of the first of the client's endpoints that answers.

        Raises:
            Unavailable: the node(s) did not answer (:class:`Timeout` when
                the deadline passed).
            PermissionDenied: the token may not ask.
        """
        if endpoint is not None:
            try:
                split_endpoint(endpoint)
            except ValueError as err:
                raise InvalidArgument(str(err)) from None
            return self._status(endpoint, time.monotonic() + self._t.timeout)
        deadline = time.monotonic() + self._t.timeout
        last: Optional[FlashKVError] = None
        for ep in self._t.endpoints:
            try:
                return self._status(ep, deadline)
            except PermissionDenied:
                raise
            except FlashKVError as e:
                last = e
        assert last is not None
        raise last

    def statuses(self) -> dict[str, Union[NodeStatus, FlashKVError]]:
        """The status of every endpoint (like ``kvctl status``): a
        :class:`NodeStatus`, or the error of a node that did not answer."""
        out: dict[str, Union[NodeStatus, FlashKVError]] = {}
        for ep in self._t.endpoints:
            try:
                out[ep] = self._status(ep, time.monotonic() + self._t.timeout)
            except FlashKVError as e:
                out[ep] = e
        return out

    # ------------------------------------------------------------ internals ---

    def _search_call(self, req: Any, what: str, serializable: bool) -> list[tuple[bytes, float]]:
        resp = self._t.execute(req, write=False, serializable=serializable)
        if resp.WhichOneof("result") != "search":
            raise ProtocolError(f"unexpected response to {what}: {resp.WhichOneof('result')}")
        return [(bytes(h.key), h.score) for h in resp.search.hits]

    def _status(self, endpoint: str, deadline: float) -> NodeStatus:
        req = _proto.Request()
        req.status.SetInParent()
        resp = self._t.call_once(endpoint, req, deadline)
        kind = resp.WhichOneof("result")
        if kind == "error":
            e = resp.error
            if e.code == _CODE["PERMISSION_DENIED"]:
                raise PermissionDenied(e.message)
            raise Unavailable(e.message)
        if kind != "status":
            raise ProtocolError(f"unexpected response to status: {kind}")
        s = resp.status
        return NodeStatus(
            endpoint=endpoint,
            id=s.node_id,
            role=_ROLES.get(_proto.ROLE_NAME.get(s.role, ""), "unknown"),
            term=s.term,
            leader_id=s.leader_id,
            commit_index=s.commit_index,
            applied_index=s.applied_index,
            leader_addr=s.leader_addr,
        )


def _text(x: str, what: str) -> str:
    """``x``, which must be a ``str``: queries are text, not bytes."""
    if not isinstance(x, str):
        raise TypeError(f"{what} must be str, not {type(x).__name__}")
    return x


def _count(n: int, what: str) -> int:
    """A result count for the wire: at least 0 (0: the server's default),
    capped at what a ``uint32`` holds (the server caps it further)."""
    if n < 0:
        raise InvalidArgument(f"{what} must not be negative")
    return min(n, 0xFFFFFFFF)
