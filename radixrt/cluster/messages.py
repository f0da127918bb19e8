"""What crosses Ray between the ingress and a replica: msgpack bytes of typed Structs, as on every
other radixrt boundary (Ray pickles the call; the payload inside is decoded by declared type)."""

from __future__ import annotations

from typing import Any, Union

import msgspec

from radixrt.runtime.protocol import DebugCache, ErrorOut, FlushCache, GetStats, TokenBatch, WorkerReady


class Started(msgspec.Struct, tag=True):
    """A replica's first message on a request: it took the request."""

    replica: str


class ControlReply(msgspec.Struct, tag=True):
    replica: str
    stats: dict[str, Any]


ReplicaStreamMsg = Union[Started, TokenBatch, ErrorOut]
ControlMsg = Union[GetStats, FlushCache, DebugCache]

_encoder = msgspec.msgpack.Encoder()
stream_decoder = msgspec.msgpack.Decoder(ReplicaStreamMsg)
control_decoder = msgspec.msgpack.Decoder(ControlMsg)
reply_decoder = msgspec.msgpack.Decoder(ControlReply)
ready_decoder = msgspec.msgpack.Decoder(WorkerReady)


def encode(msg: Any) -> bytes:
    return _encoder.encode(msg)
