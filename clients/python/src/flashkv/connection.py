"""One pipelined connection to a FlashKV node (SPEC section 6).

Each frame is a 4-byte big-endian length, then one protobuf ``Frame``.
:meth:`Connection.submit` gives the request a fresh id, queues its frame and
returns a :class:`concurrent.futures.Future`; one I/O thread per connection
writes whatever is queued (many requests in one send) and reads responses,
completing each request's future by the id the response echoes. So any
number of threads can have requests in flight on one connection at once.

The I/O thread is the only one that touches the socket (which also keeps an
``ssl.SSLSocket`` safe: OpenSSL objects are not to be used from two threads
at once); it runs the socket non-blocking under a selector and is woken by
a socket pair when a request is queued or the connection is closed.

When the connection fails (closed by the server, an I/O error, a malformed
or oversized frame, a frame that is not a response), every pending future
fails with :class:`ConnectionLost` (the request may have been applied) and
later submissions raise :class:`NotSent` (nothing was sent).
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from concurrent.futures import Future
from typing import Any, Optional

from google.protobuf.message import DecodeError

from . import _proto

#: The server's default maximum frame length (kv-net ``DEFAULT_MAX_FRAME_LENGTH``).
DEFAULT_MAX_FRAME_LENGTH = 16 * 1024 * 1024

_READ_SIZE = 256 * 1024
# Reads per wake-up before the loop turns to writing again.
_READS_PER_TURN = 16


class ConnectFailed(Exception):
    """The connection could not be established; nothing was sent."""


class NotSent(Exception):
    """The connection was closed before the request was handed to it."""


class ConnectionLost(Exception):
    """The connection failed after the request was handed to it: it may or
    may not have been applied."""


class FrameTooLarge(Exception):
    """The request does not fit in one frame; nothing was sent."""


class _Broken(Exception):
    """Why the I/O loop stops."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``.

    Raises:
        ValueError: the endpoint is not of that form.
    """
    host, sep, port = endpoint.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Connection:
    """A pipelined connection to the node at ``endpoint``.

    Args:
        endpoint: ``host:port``.
        connect_timeout: Bound on the TCP connect and the TLS handshake.
        ssl_context: TLS when given; the host name of ``endpoint`` is checked
            against the node's certificate.
        max_frame_length: Largest frame sent or accepted.

    Raises:
        ConnectFailed: the connection could not be established.
    """

    def __init__(
        self,
        endpoint: str,
        connect_timeout: float,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH,
    ) -> None:
        self.endpoint = endpoint
        self._max = max_frame_length
        host, port = split_endpoint(endpoint)
        try:
            sock = socket.create_connection((host, port), timeout=max(connect_timeout, 0.001))
        except OSError as e:
            raise ConnectFailed(f"connect {endpoint}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                # The handshake runs here, under the connect timeout.
                sock = ssl_context.wrap_socket(sock, server_hostname=host)
            sock.setblocking(False)
        except (OSError, ValueError) as e:
            sock.close()
            raise ConnectFailed(f"connect {endpoint}: {e}") from e
        self._sock: socket.socket = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._out: list[bytes] = []
        self._next_id = 1
        self._woken = False
        self._closing = False
        self._closed: Optional[str] = None
        #: Most requests that were in flight at once (for tests and curiosity).
        self.max_in_flight = 0
        # Introduce the connection as a client's at once (as kv-net's
        # ClientConn does), so the server's handshake timeout never closes
        # it while it is idle.
        hello = _proto.Frame()
        hello.hello.protocol_version = _proto.PROTOCOL_VERSION
        data = hello.SerializeToString()
        self._out.append(len(data).to_bytes(4, "big") + data)
        self._thread = threading.Thread(
            target=self._run, name=f"flashkv-io-{endpoint}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------ callers ---

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        return self._closed is not None or self._closing

    @property
    def pending(self) -> int:
        """Requests waiting for their response."""
        with self._lock:
            return len(self._pending)

    def submit(self, request: Any) -> tuple[int, Future[Any]]:
        """Sends a copy of ``request`` with a fresh id; returns the id and a
        future of the ``Response``.

        Raises:
            NotSent: the connection is closed.
            FrameTooLarge: the request does not fit in one frame.
        """
        frame = _proto.Frame()
        frame.request.CopyFrom(request)
        with self._lock:
            if self._closed is not None or self._closing:
                raise NotSent(self._closed or "connection closed")
            rid = self._next_id
            self._next_id += 1
        frame.request.id = rid
        data = frame.SerializeToString()
        if len(data) > self._max:
            raise FrameTooLarge(
                f"request of {len(data)} bytes is larger than the maximum frame ({self._max})"
            )
        fut: Future[Any] = Future()
        with self._lock:
            if self._closed is not None or self._closing:
                raise NotSent(self._closed or "connection closed")
            self._pending[rid] = fut
            self.max_in_flight = max(self.max_in_flight, len(self._pending))
            self._out.append(len(data).to_bytes(4, "big") + data)
            wake = not self._woken
            self._woken = True
        if wake:
            self._wake()
        return rid, fut

    def forget(self, rid: int) -> None:
        """Stops waiting for request ``rid`` (its caller gave up)."""
        with self._lock:
            self._pending.pop(rid, None)

    def close(self, timeout: float = 2.0) -> None:
        """Closes the connection; pending requests fail with
        :class:`ConnectionLost`. Waits (bounded) for the I/O thread."""
        with self._lock:
            self._closing = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # Already signalled (buffer full) or already closed.

    # ------------------------------------------------------------ I/O thread ---

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sock = self._sock
        sel.register(self._wake_r, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        inbuf = bytearray()
        sending: Optional[memoryview] = None
        read_wants_write = False
        reason = "connection closed"
        try:
            while True:
                with self._lock:
                    if self._closing:
                        reason = "connection closed by the client"
                        break
                    self._woken = False
                    if sending is None and self._out:
                        sending = memoryview(b"".join(self._out))
                        self._out.clear()
                events = selectors.EVENT_READ
                if sending is not None or read_wants_write:
                    events |= selectors.EVENT_WRITE
                sel.modify(sock, events)
                if self._tls and sock.pending():  # type: ignore[attr-defined]
                    ready = [(sel.get_key(sock), selectors.EVENT_READ)]
                else:
                    ready = sel.select(timeout=5.0)
                for key, mask in ready:
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                        continue
                    if mask & selectors.EVENT_READ or (
                        read_wants_write and mask & selectors.EVENT_WRITE
                    ):
                        read_wants_write = self._read(sock, inbuf)
                    if mask & selectors.EVENT_WRITE and sending is not None:
                        sending = self._write(sock, sending)
        except _Broken as e:
            reason = str(e)
        except (OSError, ValueError) as e:
            reason = f"connection to {self.endpoint} lost: {e}"
        except Exception as e:  # noqa: BLE001 - never leave callers waiting
            reason = f"connection to {self.endpoint} failed: {e!r}"
        finally:
            self._shut(sel, reason)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _read(self, sock: socket.socket, inbuf: bytearray) -> bool:
        """Reads what is there and dispatches whole frames; true when a TLS
        read needs the socket to be writable first."""
        wants_write = False
        for _ in range(_READS_PER_TURN):
            try:
                chunk = sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                wants_write = True
                break
            if not chunk:
                raise _Broken(f"connection closed by the server ({self.endpoint})")
            inbuf += chunk
        self._dispatch(inbuf)
        return wants_write

    def _dispatch(self, inbuf: bytearray) -> None:
        pos = 0
        end = len(inbuf)
        try:
            while end - pos >= 4:
                n = int.from_bytes(inbuf[pos : pos + 4], "big")
                if n > self._max:
                    raise _Broken(
                        f"{self.endpoint} sent a frame of {n} bytes, "
                        f"larger than the maximum ({self._max})"
                    )
                if end - pos - 4 < n:
                    break
                body = bytes(inbuf[pos + 4 : pos + 4 + n])
                pos += 4 + n
                frame = _proto.Frame()
                try:
                    frame.ParseFromString(body)
                except DecodeError as e:
                    raise _Broken(f"{self.endpoint} sent a malformed frame: {e}") from e
                if frame.WhichOneof("body") != "response":
                    raise _Broken(f"{self.endpoint} sent a frame that is not a response")
                resp = frame.response
                with self._lock:
                    fut = self._pending.pop(resp.id, None)
                if fut is not None:  # None: its caller gave up.
                    fut.set_result(resp)
        finally:
            del inbuf[:pos]

    def _write(self, sock: socket.socket, sending: memoryview) -> Optional[memoryview]:
        try:
            n = sock.send(sending)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            # TLS: retried later with the very same buffer, as OpenSSL wants.
            return sending
        return sending[n:] if n < len(sending) else None

    def _shut(self, sel: selectors.BaseSelector, reason: str) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = reason
            pending = self._pending
            self._pending = {}
            self._out.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(reason))
        sel.close()
        for s in (self._sock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
