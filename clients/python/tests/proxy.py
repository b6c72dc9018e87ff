"""A TCP proxy for the tests that can swallow responses: it forwards
frames both ways and, while told to, closes the connection instead of
forwarding a response, so the client sees its request sent and the
connection lost (outcome unknown) although the server applied it."""

from __future__ import annotations

import socket
import threading


class DroppingProxy:
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._lsock = socket.socket()
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(16)
        self._lsock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self._lsock.getsockname()[1]
        self._lock = threading.Lock()
        self._drop = 0
        self.dropped = 0
        self.connections = 0
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def drop_next_responses(self, n: int) -> None:
        with self._lock:
            self._drop = n

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._lsock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                s = socket.create_connection(self._target, timeout=2)
            except OSError:
                c.close()
                continue
            for x in (c, s):
                x.settimeout(0.2)
            with self._lock:
                self.connections += 1
                self._socks += [c, s]
            self._spawn(self._pump, c, s, False)
            self._spawn(self._pump, s, c, True)

    def _pump(self, src: socket.socket, dst: socket.socket, responses: bool) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                try:
                    chunk = src.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                if not responses:
                    dst.sendall(chunk)
                    continue
                buf += chunk
                # Forward whole frames, or swallow one and cut the link.
                while len(buf) >= 4:
                    n = int.from_bytes(buf[:4], "big")
                    if len(buf) < 4 + n:
                        break
                    with self._lock:
                        drop = self._drop > 0
                        if drop:
                            self._drop -= 1
                            self.dropped += 1
                    if drop:
                        return
                    dst.sendall(bytes(buf[: 4 + n]))
                    del buf[: 4 + n]
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                x.close()

    def close(self) -> None:
        self._stop.set()
        self._lsock.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> "DroppingProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
