"""The exceptions of the FlashKV client.

Every failure is a :class:`FlashKVError` whose :attr:`~FlashKVError.definite`
attribute says whether the operation was certainly **not** applied
(``True``) or may have been (``False``, only ever :class:`UnknownOutcome`).
This is the distinction of kv-client's ``Error::is_definite`` and of kvctl's
exit codes 3 (definite) and 4 (unknown outcome).
"""

from __future__ import annotations


class FlashKVError(Exception):
    """Base class of every error raised by this package.

    Attributes:
        message: What happened, for humans.
        definite: ``True`` when the operation was certainly not applied.
    """

    definite: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(FlashKVError, ValueError):
    """The request is invalid (an empty key, a bad endpoint, a frame too
    large...); nothing was applied. Server code ``INVALID_ARGUMENT``."""


class PermissionDenied(FlashKVError):
    """The token is missing or unknown, or its role may not do this;
    nothing was applied. Server code ``PERMISSION_DENIED``."""


class Unavailable(FlashKVError):
    """No node could serve the operation (no leader, nodes unreachable,
    overloaded); nothing was applied. Server code ``UNAVAILABLE``, and
    connection failures before a request was sent."""


class Timeout(Unavailable, TimeoutError):
    """The operation's deadline passed and nothing was applied (a read, or a
    write that was never sent). A write whose deadline passed while it may
    have reached a leader raises :class:`UnknownOutcome` instead."""


class UnknownOutcome(FlashKVError):
    """The write may or may not have been applied: its deadline passed, or
    the connection was lost, after it was sent, and retries (with the same
    request number, so at most one applies) did not settle it. A write
    without de-duplication is not retried: it raises this as soon as an
    attempt's outcome is unknown, also when the node has not answered within
    ``attempt_timeout``.

    Attributes:
        timed_out: ``True`` when the deadline, or the wait for one attempt's
            answer (``attempt_timeout``), ran out (rather than the server
            reporting that it cannot tell, or the connection being lost).
    """

    definite = False

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ProtocolError(FlashKVError):
    """The server answered with something this client does not understand
    (raised for reads; a write in that case raises :class:`UnknownOutcome`)."""


class ClientClosed(FlashKVError):
    """The :class:`~flashkv.Client` was closed; nothing was sent."""


__all__ = [
    "FlashKVError",
    "InvalidArgument",
    "PermissionDenied",
    "Unavailable",
    "Timeout",
    "UnknownOutcome",
    "ProtocolError",
    "ClientClosed",
]
