"""Many threads share one client: their requests are pipelined on one
connection, and every write lands."""

from __future__ import annotations

import threading
import uuid


def test_sixteen_threads_on_one_client_all_land(cluster):
    p = "conc-" + uuid.uuid4().hex[:8] + "/"
    threads, per_thread = 16, 40
    errors: list = []
    start = threading.Barrier(threads)
    with cluster.client(timeout=15) as c:
        c.put(p + "warm-up", "x")  # the leader is known before the rush
        c.delete(p + "warm-up")

        def work(t: int) -> None:
            try:
                start.wait(5)
                for i in range(per_thread):
                    c.put(f"{p}{t:02d}-{i:03d}", f"{t}:{i}")
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not any(t.is_alive() for t in ts), "a writer thread is stuck"
        assert not errors, errors[:3]
        got = dict(c.range(prefix=p))
        assert len(got) == threads * per_thread
        for t in range(threads):
            for i in range(per_thread):
                assert got[f"{p}{t:02d}-{i:03d}".encode()] == f"{t}:{i}".encode()
        # One connection to the leader carried them, many at a time.
        leader_conn = c._t.conns[c.leader]
        assert leader_conn.max_in_flight > 1, "requests were not pipelined"
        assert len([x for x in c._t.conns.values() if not x.closed]) <= len(cluster.nodes)


def test_concurrent_reads_and_writes_match_by_id(cluster):
    """Each thread reads back its own key while the others write: every
    response reaches the request it answers."""
    p = "ids-" + uuid.uuid4().hex[:8] + "/"
    errors: list = []
    with cluster.client(timeout=15) as c:

        def work(t: int) -> None:
            try:
                for i in range(30):
                    k = f"{p}{t}"
                    c.put(k, f"{t}-{i}")
                    v = c.get(k)
                    assert v == f"{t}-{i}".encode(), (k, v)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors, errors[:3]
