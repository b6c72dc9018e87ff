"""Real ``kvd`` processes on free loopback ports, for the tests.

Like bins/kvd/tests/cluster/common.rs: every node gets ``--id --listen
--peers --data-dir`` in a temporary directory, start-up is awaited (bounded)
on the log line ``node started``, and every process started is stopped by
its PID (SIGTERM, then SIGKILL after a bound) and reaped. Every wait here is
bounded in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import flashkv

#: The workspace root (clients/python/tests/ -> three levels up).
WORKSPACE = Path(__file__).resolve().parents[3]


def target_dir() -> Path:
    t = os.environ.get("CARGO_TARGET_DIR")
    return Path(t) if t else WORKSPACE / "target"


def kvd_bin() -> Path:
    """``$FLASHKV_KVD`` if set, else the debug build of the workspace."""
    env = os.environ.get("FLASHKV_KVD")
    return Path(env) if env else target_dir() / "debug" / "kvd"


def build_kvd(timeout: float = 1800.0) -> Path:
    """``cargo build -p kvd`` (a no-op when up to date), unless
    ``$FLASHKV_KVD`` names a binary. Bounded: cargo may wait for a build
    lock held by another cargo."""
    if os.environ.get("FLASHKV_KVD"):
        return kvd_bin()
    subprocess.run(
        ["cargo", "build", "-q", "-p", "kvd"], cwd=WORKSPACE, check=True, timeout=timeout
    )
    return kvd_bin()


def free_ports(n: int) -> list[int]:
    """Ports that were free a moment ago (all bound at once, so distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(what: str, cond, within: float, every: float = 0.05):
    """Polls ``cond()`` until it returns something truthy; fails after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(every)


class Node:
    """One kvd process."""

    def __init__(self, id: int, listen: str, peers: str, data_dir: Path, log: Path,
                 extra: Sequence[str] = ()) -> None:
        self.id = id
        self.listen = listen
        self.peers = peers
        self.data_dir = data_dir
        self.log = log
        self.extra = list(extra)
        self.proc: Optional[subprocess.Popen] = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, within: float = 15.0) -> None:
        assert self.proc is None, f"node {self.id} already running"
        before = self.log_text().count("node started")
        args = [str(kvd_bin()), "--id", str(self.id), "--listen", self.listen,
                "--data-dir", str(self.data_dir), "--log-level", "info"]
        if self.peers:
            args += ["--peers", self.peers]
        args += self.extra
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.log_text().count("node started") > before:
                return
            if not self.running:
                raise AssertionError(f"node {self.id} exited at start-up:\n{self.log_text()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"node {self.id} did not start within {within}s:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> Optional[int]:
        """Sends ``sig`` to the node's PID, waits (bounded), then SIGKILLs."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=within)
            return None

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.stop(signal.SIGKILL)


class Cluster:
    """``n`` kvd nodes in ``dir``, all started with the same ``--peers``."""

    def __init__(self, dir: Path, n: int = 3, extra: Sequence[str] = ()) -> None:
        self.dir = dir
        listens = [f"127.0.0.1:{p}" for p in free_ports(n)]
        peers = ",".join(f"{i + 1}={a}" for i, a in enumerate(listens)) if n > 1 else ""
        self.nodes = [
            Node(i + 1, a, peers, dir / f"node{i + 1}", dir / f"node{i + 1}.log", extra)
            for i, a in enumerate(listens)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [n.listen for n in self.nodes]

    def start(self) -> "Cluster":
        for n in self.nodes:
            n.start()
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def client(self, timeout: float = 5.0, **kw) -> flashkv.Client:
        return flashkv.Client(self.endpoints, timeout=timeout, **kw)

    def statuses(self, among: Optional[Sequence[int]] = None) -> list[flashkv.NodeStatus]:
        out = []
        with flashkv.Client(self.endpoints, timeout=0.5) as c:
            for i in among if among is not None else range(len(self.nodes)):
                if self.nodes[i].running:
                    try:
                        out.append(c.status(self.nodes[i].listen))
                    except flashkv.FlashKVError:
                        pass
        return out

    def wait_leader(self, within: float = 30.0) -> int:
        """Index of the leader once one leads and every answering node (a
        majority) agrees."""

        def agreed() -> Optional[int]:
            ss = self.statuses()
            leaders = [s for s in ss if s.role == "leader"]
            if (len(leaders) == 1 and len(ss) * 2 > len(self.nodes)
                    and all(s.leader_id == leaders[0].id for s in ss)):
                return leaders[0].id
            return None

        try:
            leader_id = wait_until("a leader", agreed, within, every=0.1)
        except AssertionError:
            raise AssertionError(f"no leader within {within}s; logs:\n{self.logs()}") from None
        return next(i for i, n in enumerate(self.nodes) if n.id == leader_id)

    def logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- node {n.id} ---\n" + "\n".join(n.log_text().splitlines()[-lines:])
            for n in self.nodes
        )
