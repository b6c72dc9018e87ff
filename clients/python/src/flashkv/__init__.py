"""FlashKV: a pure-Python client of the FlashKV replicated key-value store.

It speaks the binary protocol of kv-net (4-byte big-endian length, then one
protobuf ``Frame``), finds the leader by itself, pipelines requests from
many threads on one connection per node, and retries where that is safe.

Example::

    import flashkv

    with flashkv.Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as c:
        c.put("user:1", "Jane")
        c.get("user:1")                      # b'Jane'
        c.range(prefix="user:")              # [(b'user:1', b'Jane')]
        c.search("jane", prefix="user:")     # [(b'user:1', score)] (kvd --search)

Every error is a :class:`FlashKVError`; ``err.definite`` is true when the
operation was certainly not applied, false (:class:`UnknownOutcome`) when it
may have been.
"""

from .client import Client
from .types import BatchOp, CasResult, Delete, NodeStatus, Put
from .errors import (
    ClientClosed,
    FlashKVError,
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
    Timeout,
    Unavailable,
    UnknownOutcome,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CasResult",
    "NodeStatus",
    "Put",
    "Delete",
    "BatchOp",
    "FlashKVError",
    "InvalidArgument",
    "PermissionDenied",
    "Unavailable",
    "Timeout",
    "UnknownOutcome",
    "ProtocolError",
    "ClientClosed",
]
