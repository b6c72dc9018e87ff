"""The protobuf messages of proto/flashkv.proto, built at import time from
the descriptor that kv-net compiles (``_descriptor.py``, written by
``cargo xtask python-proto``): no ``protoc`` and no generated ``_pb2`` code.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

from ._descriptor import FILE_DESCRIPTOR, PROTOCOL_VERSION

# A pool of our own, so that another copy of the same .proto in the default
# pool (e.g. an application's generated code) never conflicts with ours.
_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(FILE_DESCRIPTOR)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName("flashkv." + name))


def _enum(name: str) -> dict[str, int]:
    return {v.name: v.number for v in _POOL.FindEnumTypeByName("flashkv." + name).values}


Frame = _message("Frame")
Hello = _message("Hello")
Request = _message("Request")
Response = _message("Response")
Put = _message("Put")
Get = _message("Get")
Delete = _message("Delete")
Cas = _message("Cas")
Range = _message("Range")
Batch = _message("Batch")
BatchOp = _message("BatchOp")
Status = _message("Status")
Search = _message("Search")
Similar = _message("Similar")
ScoredKey = _message("ScoredKey")
SearchResult = _message("SearchResult")

#: ErrorCode name -> number, e.g. ``ERROR_CODE["NOT_LEADER"] == 1``.
ERROR_CODE = _enum("ErrorCode")
#: ErrorCode number -> name.
ERROR_NAME = {v: k for k, v in ERROR_CODE.items()}
#: Role number -> name.
ROLE_NAME = {v: k for k, v in _enum("Role").items()}

__all__ = [
    "PROTOCOL_VERSION",
    "Frame",
    "Hello",
    "Request",
    "Response",
    "Put",
    "Get",
    "Delete",
    "Cas",
    "Range",
    "Batch",
    "BatchOp",
    "Status",
    "Search",
    "Similar",
    "ScoredKey",
    "SearchResult",
    "ERROR_CODE",
    "ERROR_NAME",
    "ROLE_NAME",
]
