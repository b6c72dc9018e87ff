"""Fake nodes: one that misbehaves in one chosen way, for the tests that
check that the client never hangs (every wait of the client is bounded), and
one that follows a script of replies, for the tests of leader discovery and
of nodes that leave an attempt unanswered."""

from __future__ import annotations

import socket
import threading

from flashkv import _proto


def _frame(msg) -> bytes:
    data = msg.SerializeToString()
    return len(data).to_bytes(4, "big") + data


def _read_frames(sock: socket.socket, buf: bytearray):
    """Frames received so far (parsed), consuming them from ``buf``."""
    out = []
    while len(buf) >= 4:
        n = int.from_bytes(buf[:4], "big")
        if len(buf) < 4 + n:
            break
        f = _proto.Frame()
        f.ParseFromString(bytes(buf[4 : 4 + n]))
        del buf[: 4 + n]
        out.append(f)
    return out


class FakeServer:
    """Listens on a free loopback port; each connection gets ``behaviour``:

    - ``silent``: reads everything, never answers;
    - ``close``: closes every connection at once;
    - ``garbage``: answers a request with a frame that is not protobuf;
    - ``huge``: answers with a length prefix of 4 GiB;
    - ``wrong_id``: answers every request with a response for another id;
    - ``not_response``: answers with a `Hello` frame;
    - ``no_result``: answers with the right id but an empty response.
    """

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self._lsock = socket.socket()
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(16)
        self._lsock.settimeout(0.1)
        self.addr = "127.0.0.1:%d" % self._lsock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._lsock.accept()
            except (socket.timeout, OSError):
                continue
            if self.behaviour == "close":
                c.close()
                continue
            c.settimeout(0.1)
            self._socks.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, c: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                try:
                    chunk = c.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buf += chunk
                for f in _read_frames(c, buf):
                    if f.WhichOneof("body") != "request":
                        continue
                    self.requests += 1
                    self._answer(c, f.request)
        except OSError:
            pass
        finally:
            c.close()

    def _answer(self, c: socket.socket, req) -> None:
        b = self.behaviour
        if b == "silent":
            return
        if b == "garbage":
            c.sendall(b"\x00\x00\x00\x06\xff\xff\xff\xff\xff\xff")
        elif b == "huge":
            c.sendall(b"\xff\xff\xff\xff")
        elif b in ("wrong_id", "no_result"):
            f = _proto.Frame()
            f.response.id = req.id + (1000 if b == "wrong_id" else 0)
            c.sendall(_frame(f))
        elif b == "not_response":
            f = _proto.Frame()
            f.hello.protocol_version = 3
            c.sendall(_frame(f))

    def close(self) -> None:
        self._stop.set()
        self._lsock.close()
        for s in list(self._socks):
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> "FakeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScriptedServer(FakeServer):
    """Answers each request with the next reply of ``replies`` (the last one
    repeats), as kv-client's ``Scripted`` test service does:

    - ``"ok"``: the request's own result (an empty one);
    - ``"hang"``: never answers (the connection stays open);
    - ``("not_leader", addr)``: ``NOT_LEADER`` naming ``addr`` as leader.

    :attr:`seen` lists the ``(client_id, seq)`` of each request received.
    """

    def __init__(self, replies) -> None:
        assert replies
        self.replies = list(replies)
        self.seen: list[tuple[int, int]] = []
        self._seen_lock = threading.Lock()
        super().__init__("scripted")

    def _answer(self, c: socket.socket, req) -> None:
        with self._seen_lock:
            self.seen.append((req.client_id, req.seq))
            reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
        f = _proto.Frame()
        f.response.id = req.id
        if reply == "hang":
            return
        if reply == "ok":
            cmd = req.WhichOneof("cmd")
            result = cmd if cmd in ("put", "get", "delete", "cas", "batch") else "put"
            getattr(f.response, result).SetInParent()
        else:
            kind, addr = reply
            assert kind == "not_leader", reply
            f.response.error.code = _proto.ERROR_CODE["NOT_LEADER"]
            f.response.error.message = "not leader"
            f.response.error.leader_id = 2
            f.response.error.leader_addr = addr
        c.sendall(_frame(f))
