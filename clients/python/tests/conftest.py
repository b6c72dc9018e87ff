"""Fixtures: one 3-node kvd cluster for the whole session (built with
``cargo build -p kvd`` if needed), and fresh ones for tests that kill nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import Cluster, build_kvd  # noqa: E402


@pytest.fixture(scope="session")
def kvd() -> Path:
    return build_kvd()


@pytest.fixture(scope="session")
def cluster(kvd, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), 3)
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(kvd, tmp_path):
    """A cluster of its own, for a test that kills or restarts nodes."""
    (tmp_path / "cluster").mkdir()
    c = Cluster(tmp_path / "cluster", 3)
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(cluster):
    with cluster.client() as c:
        yield c
