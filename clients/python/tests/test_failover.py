"""Killing the leader (SIGKILL) under load: writes resume through the new
leader, and every acknowledged write is readable afterwards, also on the
restarted node. Pausing it (SIGSTOP: its connections stay open, silent):
the client leaves it after ``attempt_timeout`` for the new leader."""

from __future__ import annotations

import os
import signal
import threading
import time

import flashkv
from cluster import wait_until


def test_killing_the_leader_mid_load_loses_no_acknowledged_write(fresh_cluster):
    c = fresh_cluster
    li = c.wait_leader()
    acked: dict[str, tuple[str, float]] = {}
    unknown: set[str] = set()
    definite: list = []
    lock = threading.Lock()
    stop = threading.Event()

    with c.client(timeout=10) as client:

        def writer(t: int) -> None:
            i = 0
            while not stop.is_set():
                k, v = f"fo/{t}/{i:05d}", f"{t}-{i}"
                try:
                    client.put(k, v)
                    with lock:
                        acked[k] = (v, time.monotonic())
                except flashkv.UnknownOutcome:
                    with lock:
                        unknown.add(k)
                except Exception as e:  # noqa: BLE001 - checked below
                    with lock:
                        definite.append(e)
                i += 1

        ts = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in ts:
            t.start()
        try:
            wait_until("writes before the kill", lambda: len(acked) >= 100, 20)
            killed_at = time.monotonic()
            c.nodes[li].kill()
            # Writes resume through a new leader.
            wait_until("writes after the kill",
                       lambda: sum(1 for _, at in list(acked.values()) if at > killed_at) >= 100, 30)
        finally:
            stop.set()
            for t in ts:
                t.join(30)
        assert not any(t.is_alive() for t in ts)

        new = c.wait_leader(within=30)
        assert new != li
        # Other failures are definite (nothing applied) client errors.
        assert all(isinstance(e, flashkv.FlashKVError) and e.definite for e in definite), definite[:3]
        # Every acknowledged write is there (linearizable reads).
        got = dict(client.range(prefix="fo/"))
        assert client.leader == c.nodes[new].listen
        missing = [k for k, (v, _) in acked.items() if got.get(k.encode()) != v.encode()]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
        # Nothing was written that no one asked for.
        assert set(got) <= {k.encode() for k in acked} | {k.encode() for k in unknown}

    # The killed node comes back with its data and catches up.
    c.nodes[li].start()
    leader_commit = c.statuses([new])[0].commit_index

    def caught_up() -> bool:
        s = c.statuses([li])
        return bool(s) and s[0].applied_index >= leader_commit

    wait_until("the restarted node catches up", caught_up, 30, every=0.1)
    with flashkv.Client([c.nodes[li].listen], timeout=5) as one:
        local = dict(one.range(prefix="fo/", serializable=True))
    missing = [k for k, (v, _) in acked.items() if local.get(k.encode()) != v.encode()]
    assert not missing, f"the restarted node lacks {len(missing)} acknowledged writes"


def test_a_paused_leader_is_left_for_the_new_one(fresh_cluster):
    """SIGSTOP leaves the leader's connections open and silent, as a hung
    process or a partition that drops packets does. A write sent to it is
    abandoned after attempt_timeout and retried (the same request) at the
    others until they elect a new leader, well within the timeout; without
    attempt_timeout it would wait for the whole timeout and fail."""
    c = fresh_cluster
    li = c.wait_leader()
    paused = c.nodes[li]
    with c.client(timeout=10, attempt_timeout=1.0) as client:
        client.put("pause/0", "before")
        assert client.leader == paused.listen
        assert paused.proc is not None
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            client.put("pause/1", "during")
            took = time.monotonic() - t
            assert 1.0 <= took < 8.0, took
            assert client.leader not in (None, paused.listen), client.leader
            assert client.get("pause/1") == b"during"
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        new = c.wait_leader(within=30)
        assert new != li
        assert dict(client.range(prefix="pause/")) == {b"pause/0": b"before", b"pause/1": b"during"}
