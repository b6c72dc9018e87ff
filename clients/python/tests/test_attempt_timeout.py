"""``attempt_timeout``: a node that leaves an attempt unanswered (hung,
paused, behind a partition that drops packets; its connection stays open) is
left for the others, as kv-client's ``Options::attempt_timeout`` (the tests
at the end of crates/kv-client/tests/retries.rs), against scripted fake
nodes. Every wait is bounded: ``timeout`` is 5 s, each test far less."""

from __future__ import annotations

import contextlib
import time

import pytest

import flashkv
from fake_server import ScriptedServer

TIMEOUT = 5.0


@contextlib.contextmanager
def servers(*scripts):
    """Scripted servers started in order (a script may be a function of the
    addresses of those started before it), all closed at the end."""
    started: list[ScriptedServer] = []
    try:
        for script in scripts:
            replies = script(*[s.addr for s in started]) if callable(script) else script
            started.append(ScriptedServer(replies))
        yield started
    finally:
        for s in started:
            s.close()


def client(srvs, dedup: bool, attempt: float, **kw) -> flashkv.Client:
    return flashkv.Client(
        [s.addr for s in srvs], timeout=TIMEOUT, dedup=dedup, attempt_timeout=attempt, **kw
    )


def test_a_node_that_does_not_answer_is_left_for_the_next():
    with servers(["hang"], ["ok"]) as (hung, ok), client([hung, ok], True, 0.2) as c:
        t = time.monotonic()
        c.put("k", "v")
        took = time.monotonic() - t
        assert 0.2 <= took < 2.0, took
        # The same request, so the cluster applies it once.
        assert len(hung.seen) == 1 and len(ok.seen) == 1, (hung.seen, ok.seen)
        assert hung.seen[0] == ok.seen[0]
        assert hung.seen[0][0] == c.client_id != 0
        # The connection to the hung node was dropped, the good node leads.
        assert hung.addr not in c._t.conns and c.leader == ok.addr
    # Reads move on too.
    with servers(["hang"], ["ok"]) as (hung, ok), client([hung, ok], False, 0.2) as c:
        t = time.monotonic()
        assert c.get("k") is None
        assert time.monotonic() - t < 2.0
        assert len(hung.seen) == 1 and len(ok.seen) == 1


def test_without_dedup_a_write_left_unanswered_is_unknown_and_not_retried():
    with servers(["hang"], ["ok"]) as (hung, ok), client([hung, ok], False, 0.2) as c:
        t = time.monotonic()
        with pytest.raises(flashkv.UnknownOutcome) as e:
            c.put("k", "v")
        took = time.monotonic() - t
        assert e.value.definite is False and e.value.timed_out
        assert hung.addr in str(e.value), str(e.value)
        # Reported once the attempt is given up, not at the deadline.
        assert 0.2 <= took < 2.0, took
        assert len(hung.seen) == 1 and ok.seen == []
        assert c.leader is None


# max_hints=1: a hint that is not followed does not use up the budget (the
# hint to the new leader is the first one followed).
@pytest.mark.parametrize("max_hints", [8, 1])
def test_hints_to_a_node_that_did_not_answer_wait_for_a_new_leader(max_hints):
    with servers(
        ["hang"],
        ["ok"],
        # Before the election the follower still names the hung leader.
        lambda hung, new: [("not_leader", hung), ("not_leader", hung), ("not_leader", new)],
    ) as (hung, new, follower), client([hung, follower], True, 0.3, max_hints=max_hints) as c:
        c.put("k", "v")
        assert len(hung.seen) == 1, f"the hung node was asked {len(hung.seen)} times"
        assert len(follower.seen) == 3, follower.seen
        assert len(new.seen) == 1
        assert new.seen[0] == hung.seen[0], "the same request"
        assert c.leader == new.addr


def test_a_slow_leader_the_others_still_name_is_tried_again():
    with servers(
        ["hang", "ok"], lambda leader: [("not_leader", leader)]
    ) as (leader, follower), client([leader, follower], True, 0.2) as c:
        t = time.monotonic()
        c.put("k", "v")
        took = time.monotonic() - t
        assert len(leader.seen) == 2, leader.seen
        assert leader.seen[0] == leader.seen[1], "retried as the same request"
        # Not before one more attempt_timeout after the stall.
        assert 0.4 <= took < 3.0, took
        assert len(follower.seen) >= 1
        assert c.leader == leader.addr


def test_attempt_timeout_must_be_positive():
    with pytest.raises(flashkv.InvalidArgument):
        flashkv.Client(["127.0.0.1:1"], attempt_timeout=0)
    with flashkv.Client(["127.0.0.1:1"]) as c:
        assert c._t.attempt_timeout == 1.0
