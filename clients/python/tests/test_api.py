"""Every API call against the session's 3-node cluster."""

from __future__ import annotations

import threading
import uuid

import pytest

import flashkv


def uniq(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_put_get_delete(client):
    k = uniq()
    assert client.get(k) is None
    client.put(k, "v1")
    assert client.get(k) == b"v1"
    client.put(k, "v2")
    assert client.get(k) == b"v2"
    client.delete(k)
    assert client.get(k) is None
    client.delete(k)  # deleting an absent key is fine


def test_str_and_bytes_keys_are_the_same_key(client):
    k = uniq("ключ")  # non-ASCII: encoded as UTF-8
    client.put(k, "text")
    assert client.get(k.encode("utf-8")) == b"text"
    client.put(k.encode("utf-8"), b"bytes")
    assert client.get(k) == b"bytes"
    client.put(bytearray(k.encode("utf-8")), memoryview(b"view"))
    assert client.get(k) == b"view"


def test_binary_keys_and_values(client):
    key = b"\x00\xffbin\x80" + uuid.uuid4().bytes
    value = bytes(range(256)) * 64
    client.put(key, value)
    assert client.get(key) == value
    client.put(key, b"")
    assert client.get(key) == b""  # an empty value is not absence


def test_serializable_get(client):
    k = uniq()
    client.put(k, "v")
    # A possibly stale read from any node: with a bounded wait, every node
    # has it.
    from cluster import wait_until

    assert wait_until("serializable read", lambda: client.get(k, serializable=True) == b"v", 5)


def test_cas_success_and_failure(client):
    k = uniq()
    r = client.cas(k, None, "first")
    assert r and r.swapped and r.current is None
    assert client.get(k) == b"first"
    r = client.cas(k, None, "again")  # not absent any more
    assert not r and r.current == b"first"
    r = client.cas(k, "wrong", "x")
    assert not r.swapped and r.current == b"first"
    assert client.get(k) == b"first"
    assert client.cas(k, b"first", b"second")
    assert client.get(k) == b"second"
    client.delete(k)
    r = client.cas(k, "second", "x")
    assert not r and r.current is None  # absent now


def test_range_bounds_prefix_limit_reverse_keys_only(client):
    p = uniq("r") + "/"
    keys = [f"{p}{i:02d}" for i in range(12)]
    for i, k in enumerate(keys):
        client.put(k, f"v{i}")
    client.put(p[:-1] + "0", "outside the prefix")
    everything = client.range(prefix=p)
    assert everything == [(k.encode(), f"v{i}".encode()) for i, k in enumerate(keys)]
    assert client.range(prefix=p, limit=3) == everything[:3]
    assert client.range(prefix=p, reverse=True) == everything[::-1]
    assert client.range(prefix=p, reverse=True, limit=2) == everything[::-1][:2]
    # [start, end): start inclusive, end exclusive.
    assert client.range(start=keys[3], end=keys[6]) == everything[3:6]
    assert client.range(start=keys[10], prefix=p) == everything[10:]
    assert client.range(prefix=p, keys_only=True) == [(k, b"") for k, _ in everything]
    assert client.range(prefix=p, serializable=True, limit=1) in ([everything[0]], [])
    assert client.range(prefix=uniq("none")) == []
    with pytest.raises(flashkv.InvalidArgument):
        client.range(limit=-1)


def test_range_pages_through_more_than_one_server_page(client):
    p = uniq("page") + "/"
    n = 1200
    # Batches keep this quick; the server's page is smaller than n.
    for base in range(0, n, 200):
        client.batch([flashkv.Put(f"{p}{i:05d}", str(i)) for i in range(base, base + 200)])
    got = client.range(prefix=p)
    assert [k for k, _ in got] == [f"{p}{i:05d}".encode() for i in range(n)]
    assert len(client.range(prefix=p, limit=1100)) == 1100


def test_batch_applies_all(client):
    p = uniq("b")
    client.put(p + "/gone", "x")
    client.batch([
        flashkv.Put(p + "/a", "1"),
        ("put", p + "/b", b"2"),
        flashkv.Delete(p + "/gone"),
        ("delete", p + "/never-was"),
    ])
    assert client.range(prefix=p + "/") == [(f"{p}/a".encode(), b"1"), (f"{p}/b".encode(), b"2")]


def test_batch_applies_none_when_one_op_is_invalid(client):
    p = uniq("b")
    with pytest.raises(flashkv.InvalidArgument) as e:
        client.batch([flashkv.Put(p + "/a", "1"), flashkv.Put(b"", "empty key")])
    assert e.value.definite
    assert client.get(p + "/a") is None
    with pytest.raises(TypeError):
        client.batch([("upsert", "k", "v")])


def test_batch_is_never_seen_half_applied(client):
    """A reader never sees a batch that set ten keys partly applied."""
    p = uniq("atomic") + "/"
    keys = [f"{p}{i}" for i in range(10)]
    client.batch([flashkv.Put(k, "0") for k in keys])
    stop = threading.Event()
    torn: list = []

    def reader():
        while not stop.is_set():
            vals = {v for _, v in client.range(prefix=p)}
            if len(vals) != 1:
                torn.append(vals)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for gen in range(1, 40):
            client.batch([flashkv.Put(k, str(gen)) for k in keys])
    finally:
        stop.set()
        t.join(10)
    assert not torn, f"saw half-applied batches: {torn[:3]}"
    assert {v for _, v in client.range(prefix=p)} == {b"39"}


def test_empty_key_is_invalid_argument(client):
    for call in (lambda: client.put("", "v"), lambda: client.get(b""),
                 lambda: client.delete(""), lambda: client.cas("", None, "v")):
        with pytest.raises(flashkv.InvalidArgument) as e:
            call()
        assert e.value.definite and isinstance(e.value, ValueError)


def test_wrong_argument_types(client):
    with pytest.raises(TypeError):
        client.put(1, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.put("k", None)  # type: ignore[arg-type]


def test_status_and_statuses(cluster, client):
    leader = cluster.nodes[cluster.wait_leader()]
    s = client.status(leader.listen)
    assert isinstance(s, flashkv.NodeStatus)
    assert s.role == "leader" and s.id == leader.id and s.leader_id == leader.id
    assert s.term >= 1 and s.applied_index >= 1 and s.commit_index >= s.applied_index - 0
    assert s.leader_addr == leader.listen
    any_node = client.status()
    assert any_node.leader_id == leader.id
    all_nodes = client.statuses()
    assert set(all_nodes) == set(cluster.endpoints)
    roles = sorted(v.role for v in all_nodes.values())
    assert roles == ["follower", "follower", "leader"]
    assert {v.id for v in all_nodes.values()} == {1, 2, 3}


def test_a_follower_listed_first_finds_the_leader(cluster):
    li = cluster.wait_leader()
    leader = cluster.nodes[li].listen
    followers = [n.listen for i, n in enumerate(cluster.nodes) if i != li]
    # Only a follower: the not-leader hint names the leader.
    with flashkv.Client([followers[0]]) as c:
        assert c.leader is None
        c.put("follower-first", "ok")
        assert c.leader == leader
        assert c.get("follower-first") == b"ok"
    with flashkv.Client(followers + [leader]) as c:
        c.put("follower-first", "ok2")
        assert c.leader == leader
    # A comma-separated string is an endpoint list too.
    with flashkv.Client(",".join(followers)) as c:
        assert c.get("follower-first") == b"ok2"


def test_context_manager_closes_the_sockets(cluster):
    with cluster.client() as c:
        c.put("cm", "1")
        c.status(cluster.endpoints[0])
        conns = list(c._t.conns.values())
        assert conns and all(not x.closed for x in conns)
        socks = [x._sock for x in conns]
        threads = [x._thread for x in conns]
    assert all(s.fileno() == -1 for s in socks), "sockets left open"
    assert all(not t.is_alive() for t in threads), "I/O threads left running"
    assert not c._t.conns
    with pytest.raises(flashkv.ClientClosed):
        c.get("cm")
    c.close()  # twice is fine


def test_bad_constructor_arguments():
    with pytest.raises(flashkv.InvalidArgument):
        flashkv.Client([])
    with pytest.raises(flashkv.InvalidArgument):
        flashkv.Client(["localhost"])
    with pytest.raises(flashkv.InvalidArgument):
        flashkv.Client(["127.0.0.1:99999"])
    with pytest.raises(flashkv.InvalidArgument):
        flashkv.Client(["127.0.0.1:7001"], timeout=0)
    with pytest.raises(flashkv.InvalidArgument):
        flashkv.Client(["127.0.0.1:7001"], cert="c.pem")


def test_every_error_is_a_flashkv_error_with_definite():
    for cls in (flashkv.InvalidArgument, flashkv.PermissionDenied, flashkv.Unavailable,
                flashkv.Timeout, flashkv.ProtocolError, flashkv.ClientClosed):
        e = cls("x")
        assert isinstance(e, flashkv.FlashKVError) and e.definite is True
    u = flashkv.UnknownOutcome("x", timed_out=True)
    assert isinstance(u, flashkv.FlashKVError) and u.definite is False and u.timed_out
    assert isinstance(flashkv.Timeout("x"), TimeoutError)
