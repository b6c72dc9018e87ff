"""TLS (with client certificates) and tokens, against a one-node kvd whose
files come from `cargo xtask certs`."""

from __future__ import annotations

import subprocess
import time

import pytest

import flashkv
from cluster import WORKSPACE, Cluster


@pytest.fixture(scope="module")
def secure(kvd, tmp_path_factory):
    d = tmp_path_factory.mktemp("secure")
    certs = d / "certs"
    subprocess.run(["cargo", "xtask", "certs", "--dir", str(certs)], cwd=WORKSPACE,
                   check=True, timeout=1200, stdout=subprocess.DEVNULL)
    tokens = {}
    for line in (certs / "auth").read_text().splitlines():
        if line and not line.startswith("#"):
            token, role = line.split()
            tokens[role] = token
    node_dir = d / "node"
    node_dir.mkdir()
    c = Cluster(node_dir, 1, extra=[
        "--cert-file", str(certs / "node.pem"), "--key-file", str(certs / "node.key"),
        "--trusted-ca-file", str(certs / "ca.pem"), "--auth-file", str(certs / "auth"),
    ])
    try:
        c.start()
        tls = dict(cacert=str(certs / "ca.pem"), cert=str(certs / "client.pem"),
                   key=str(certs / "client.key"))
        with flashkv.Client(c.endpoints, timeout=2, token=tokens["admin"], **tls) as k:
            deadline = time.monotonic() + 30
            while True:  # bounded wait for the node to lead
                try:
                    if k.status().role == "leader":
                        break
                except flashkv.FlashKVError:
                    pass
                assert time.monotonic() < deadline, c.logs()
                time.sleep(0.1)
        yield c, tls, tokens
    finally:
        c.stop()


def test_tls_with_a_client_certificate_and_a_write_token(secure):
    c, tls, tokens = secure
    with flashkv.Client(c.endpoints, token=tokens["write"], **tls) as k:
        k.put("secret", "over tls")
        assert k.get("secret") == b"over tls"
        assert k.range(prefix="sec") == [(b"secret", b"over tls")]


def test_a_read_token_may_read_but_not_write(secure):
    c, tls, tokens = secure
    with flashkv.Client(c.endpoints, token=tokens["write"], **tls) as k:
        k.put("ro", "1")
    with flashkv.Client(c.endpoints, token=tokens["read"], **tls) as k:
        assert k.get("ro") == b"1"
        with pytest.raises(flashkv.PermissionDenied) as e:
            k.put("ro", "2")
        assert e.value.definite
        assert k.status().role == "leader"
    with flashkv.Client(c.endpoints, token=tokens["admin"], **tls) as k:
        assert k.get("ro") == b"1"


def test_no_token_or_a_wrong_one_is_permission_denied(secure):
    c, tls, _ = secure
    for token in (None, "not-a-token"):
        with flashkv.Client(c.endpoints, token=token, **tls) as k:
            with pytest.raises(flashkv.PermissionDenied):
                k.get("ro")


def test_tls_refusals_are_bounded_and_definite(secure):
    c, tls, tokens = secure
    # Plaintext to a TLS port; TLS without the client certificate the node
    # requires; TLS without trusting the node's CA.
    for kw in ({}, {"cacert": tls["cacert"]}, {"cert": tls["cert"], "key": tls["key"]}):
        with flashkv.Client(c.endpoints, timeout=1.0, token=tokens["admin"], **kw) as k:
            t = time.monotonic()
            with pytest.raises(flashkv.FlashKVError) as e:
                k.get("ro")
            assert e.value.definite, (kw, e.value)
            assert time.monotonic() - t < 2.5
