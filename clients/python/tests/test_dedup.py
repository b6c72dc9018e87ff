"""Write de-duplication: a write retried with the same (client_id, seq) is
applied at most once. Each test here would fail without it."""

from __future__ import annotations

import secrets
import time
import uuid

import pytest

import flashkv
from flashkv import _proto
from flashkv.connection import Connection

from proxy import DroppingProxy


def raw_call(endpoint: str, req, timeout: float = 5.0):
    """Sends one raw request on a connection of its own; the response."""
    conn = Connection(endpoint, connect_timeout=1.0)
    try:
        _, fut = conn.submit(req)
        return fut.result(timeout=timeout)
    finally:
        conn.close()


def put_req(key: bytes, value: bytes, client_id: int, seq: int):
    r = _proto.Request()
    r.put.key, r.put.value = key, value
    r.client_id, r.seq = client_id, seq
    return r


def cas_req(key: bytes, new: bytes, client_id: int, seq: int):
    r = _proto.Request()
    r.cas.key, r.cas.expect_absent, r.cas.new_value = key, True, new
    r.client_id, r.seq = client_id, seq
    return r


def test_a_replayed_put_does_not_undo_a_later_one(cluster, client):
    leader = cluster.nodes[cluster.wait_leader()].listen
    key = uuid.uuid4().hex.encode()
    cid = secrets.randbits(63) + 1
    assert raw_call(leader, put_req(key, b"first", cid, 1)).WhichOneof("result") == "put"
    assert raw_call(leader, put_req(key, b"second", cid, 2)).WhichOneof("result") == "put"
    # The first put again, as a retry would send it: answered, not applied.
    assert raw_call(leader, put_req(key, b"first", cid, 1)).WhichOneof("result") == "put"
    assert client.get(key) == b"second"
    # The control: without a client id the same replay is applied again,
    # so the assertion above does test the de-duplication.
    raw_call(leader, put_req(key, b"first", 0, 0))
    assert client.get(key) == b"first"


def test_a_replayed_cas_gets_the_first_outcome(cluster, client):
    leader = cluster.nodes[cluster.wait_leader()].listen
    key = uuid.uuid4().hex.encode()
    cid = secrets.randbits(63) + 1
    first = raw_call(leader, cas_req(key, b"mine", cid, 7))
    assert first.WhichOneof("result") == "cas"
    again = raw_call(leader, cas_req(key, b"mine", cid, 7))
    assert again.WhichOneof("result") == "cas", "a retry must not report compare failed"
    fresh = raw_call(leader, cas_req(key, b"mine", cid, 8))
    assert fresh.WhichOneof("result") == "error"
    assert fresh.error.code == _proto.ERROR_CODE["COMPARE_FAILED"]


def test_the_client_retries_a_lost_cas_with_the_same_number(cluster, client):
    """The response of a cas is lost after the leader applied it; the
    client's retry (same seq) learns the first outcome, so cas reports
    success. Without de-duplication the retry would fail the compare."""
    li = cluster.wait_leader()
    key = "lost-" + uuid.uuid4().hex
    client.put(key, "0")
    with DroppingProxy(cluster.nodes[li].listen) as proxy:
        with flashkv.Client([proxy.addr], timeout=10) as c:
            c.get(key)  # connected, and the proxy's endpoint is the leader
            proxy.drop_next_responses(1)
            r = c.cas(key, "0", "1")
            assert proxy.dropped == 1 and proxy.connections >= 2, "the response was not lost"
            assert r.swapped, f"the retried cas reported {r}"
            assert c.get(key) == b"1"


def test_without_dedup_a_lost_write_is_an_unknown_outcome(cluster, client):
    li = cluster.wait_leader()
    key = "lost-" + uuid.uuid4().hex
    with DroppingProxy(cluster.nodes[li].listen) as proxy:
        with flashkv.Client([proxy.addr], timeout=5, dedup=False) as c:
            c.get(key)
            proxy.drop_next_responses(1)
            t = time.monotonic()
            with pytest.raises(flashkv.UnknownOutcome) as e:
                c.put(key, "v")
            assert e.value.definite is False
            assert time.monotonic() - t < 5
    # It was applied, in fact: exactly what "unknown" has to allow for.
    assert client.get(key) == b"v"
