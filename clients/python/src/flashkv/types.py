"""The values of the client's API: what keys and values may be, and the
records it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

#: What keys and values may be given as; ``str`` is encoded as UTF-8.
BytesLike = Union[bytes, bytearray, memoryview, str]


def as_bytes(x: BytesLike, what: str = "key") -> bytes:
    """``x`` as bytes (``str`` encoded as UTF-8).

    Raises:
        TypeError: ``x`` is of another type.
    """
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"{what} must be bytes or str, not {type(x).__name__}")

@dataclass(frozen=True)
class NodeStatus:
    """One node's view of the cluster, from :meth:`Client.status`."""

    #: The endpoint that answered.
    endpoint: str
    #: The node's raft id.
    id: int
    #: ``leader``, ``follower``, ``candidate``, ``pre-candidate``,
    #: ``learner`` or ``unknown``.
    role: str
    term: int
    #: The leader's id, 0 when unknown.
    leader_id: int
    commit_index: int
    applied_index: int
    #: The leader's advertise address, empty when unknown.
    leader_addr: str


@dataclass(frozen=True)
class CasResult:
    """The result of :meth:`Client.cas`; true when the swap happened.

    A compare failure is a result, not an exception (as in kv-client's
    ``CasOutcome``): ``swapped`` is false and ``current`` holds the key's
    current value (``None``: absent).
    """

    swapped: bool
    current: Optional[bytes] = None

    def __bool__(self) -> bool:
        return self.swapped


@dataclass(frozen=True)
class Put:
    """A put in :meth:`Client.batch`."""

    key: BytesLike
    value: BytesLike


@dataclass(frozen=True)
class Delete:
    """A delete in :meth:`Client.batch`."""

    key: BytesLike



#: One operation of :meth:`Client.batch`: a :class:`Put`, a :class:`Delete`,
#: or a tuple ``("put", key, value)`` / ``("delete", key)``.
BatchOp = Union[Put, Delete, Sequence[Any]]
