"""Failures are bounded in time and typed: a wrong endpoint list, nodes that
answer nonsense or nothing at all."""

from __future__ import annotations

import time

import pytest

import flashkv
from cluster import free_ports
from fake_server import FakeServer

TIMEOUT = 1.0
# What a failing operation may take beyond its timeout (a connect attempt
# and a backoff step at most).
SLACK = 1.5


def timed(call):
    t = time.monotonic()
    with pytest.raises(flashkv.FlashKVError) as e:
        call()
    return e.value, time.monotonic() - t


def test_a_wrong_endpoint_list_fails_clearly_in_bounded_time():
    ports = free_ports(2)  # nothing listens there now
    eps = [f"127.0.0.1:{p}" for p in ports]
    with flashkv.Client(eps, timeout=TIMEOUT) as c:
        for call in (lambda: c.put("k", "v"), lambda: c.get("k"), lambda: c.range()):
            err, took = timed(call)
            assert took < TIMEOUT + SLACK, took
            # Nothing could have been sent: definite, and it says why.
            assert err.definite and isinstance(err, flashkv.Unavailable)
            assert "connect 127.0.0.1:" in str(err) and "refused" in str(err).lower(), str(err)
        err, took = timed(lambda: c.status())
        assert isinstance(err, flashkv.Unavailable) and took < TIMEOUT + SLACK


def test_an_unroutable_endpoint_is_bounded_by_the_timeout():
    # TEST-NET-1: never routed; the connect either hangs (bounded by the
    # connect timeout) or fails at once.
    with flashkv.Client(["192.0.2.1:7001"], timeout=TIMEOUT, connect_timeout=0.3) as c:
        err, took = timed(lambda: c.get("k"))
        assert err.definite and took < TIMEOUT + SLACK


@pytest.mark.parametrize(
    "behaviour", ["silent", "close", "garbage", "huge", "wrong_id", "not_response"]
)
def test_a_misbehaving_server_never_hangs_the_client(behaviour):
    with FakeServer(behaviour) as srv, flashkv.Client([srv.addr], timeout=TIMEOUT) as c:
        # Reads retry until the deadline: always definite.
        err, took = timed(lambda: c.get("k"))
        assert took < TIMEOUT + SLACK, (behaviour, took)
        assert err.definite, err
        assert isinstance(err, flashkv.Timeout), err
        # A write that was sent and never answered may have been applied.
        err, took = timed(lambda: c.put("k", "v"))
        assert took < TIMEOUT + SLACK, (behaviour, took)
        if behaviour != "close":
            assert srv.requests >= 2
            assert isinstance(err, flashkv.UnknownOutcome) and not err.definite, err
        # The client is still usable, and still bounded.
        err, took = timed(lambda: c.status())
        assert took < TIMEOUT + SLACK


def test_a_response_without_a_result_is_a_protocol_error():
    with FakeServer("no_result") as srv, flashkv.Client([srv.addr], timeout=TIMEOUT) as c:
        err, took = timed(lambda: c.get("k"))
        assert isinstance(err, flashkv.ProtocolError) and took < TIMEOUT + SLACK
        err, took = timed(lambda: c.status())
        assert isinstance(err, flashkv.ProtocolError)
        # A write answered that way may or may not have been applied.
        err, took = timed(lambda: c.put("k", "v"))
        assert isinstance(err, flashkv.UnknownOutcome) and took < TIMEOUT + SLACK


def test_a_request_larger_than_a_frame_is_refused_before_sending(client):
    with pytest.raises(flashkv.InvalidArgument) as e:
        client.put("big", b"x" * (16 * 1024 * 1024 + 1))
    assert e.value.definite and "frame" in str(e.value)
