"""Every message that crosses a socket. msgspec Structs, tagged, encoded as msgpack.

A decoder built from these unions accepts only the declared types: a malformed or hostile
frame raises `msgspec.DecodeError` / `ValidationError` and is dropped by the receiver.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from radixrt.runtime.sampling_params import SamplingParams

SamplingParams = SamplingParams  # re-exported: clients build requests from this module alone


class _Msg(msgspec.Struct, tag=True, kw_only=True, omit_defaults=True):
    pass


# ---- client -> frontend (ZMQ ROUTER) -------------------------------------------------------


class GenerateRequest(_Msg):
    rid: str
    text: str | None = None
    input_ids: list[int] | None = None
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs; k: logprobs of prompt tokens k..end
    top_logprobs_num: int = 0
    stream: bool = False
    api_key: str | None = None
    cache_salt: str | None = None  # a cache namespace: requests with other salts share no cached prefix
    pin_s: float | None = None  # keep the prompt cached this many seconds after the request (capped)
    program_id: str | None = None  # requests of one DSL program: a cluster keeps them on one replica


class AbortRequest(_Msg):
    rid: str
    api_key: str | None = None


class FlushCache(_Msg):
    api_key: str | None = None


class GetStats(_Msg):
    api_key: str | None = None


class GetModelInfo(_Msg):
    api_key: str | None = None


class ScoreRequest(_Msg):
    """Score continuations after one shared prefix, in one request (the DSL's `select`).

    The frontend commits the prefix once and returns, per continuation, the logprobs of the
    continuation's tokens (tokenized together with the prefix, split at the first token that
    differs from the prefix's own tokenization).
    """

    rid: str
    prefix: str
    continuations: list[str]
    api_key: str | None = None
    cache_salt: str | None = None


ClientMsg = Union[GenerateRequest, AbortRequest, FlushCache, GetStats, GetModelInfo, ScoreRequest]


# ---- frontend -> client ---------------------------------------------------------------------


class GenerateChunk(_Msg):
    """A streamed piece: `text` is the new text since the previous chunk."""

    rid: str
    text: str
    output_ids: list[int]
    meta_info: dict[str, Any] = {}


class GenerateResult(_Msg):
    rid: str
    text: str
    output_ids: list[int]
    meta_info: dict[str, Any] = {}


class ErrorReply(_Msg):
    rid: str
    status: int
    message: str
    param: str | None = None


class StatsReply(_Msg):
    stats: dict[str, Any]


class Ack(_Msg):
    ok: bool = True


class ModelInfo(_Msg):
    model_path: str
    context_length: int
    vocab_size: int
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None


class ContinuationScore(msgspec.Struct, kw_only=True):
    token_ids: list[int]
    logprobs: list[float]  # one per continuation token
    prompt_tokens: int
    cached_tokens: int


class ScoreResult(_Msg):
    rid: str
    scores: list[ContinuationScore]


ServerMsg = Union[GenerateChunk, GenerateResult, ErrorReply, StatsReply, Ack, ModelInfo, ScoreResult]


# ---- frontend <-> worker (ipc://) -----------------------------------------------------------


class TokenizedRequest(_Msg):
    rid: str
    input_ids: list[int]
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    cache_salt: str = ""  # the effective salt (the frontend mixes in the API key's); "": unsalted
    pin_s: float = 0.0
    program_id: str | None = None  # the cluster router's affinity key (the worker ignores it)


class Abort(_Msg):
    rid: str


class DebugCache(_Msg):
    """Ask for a snapshot of one salt's radix tree (answered by StatsOut(stats={"tree": ...}))."""

    max_nodes: int = 500
    salt: str = ""


WorkerInMsg = Union[TokenizedRequest, Abort, FlushCache, GetStats, DebugCache]


class TokenOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one request produced in one scheduler step."""

    rid: str
    new_ids: list[int]
    finish_reason: dict[str, Any] | None = None  # SGLang shape: {"type": "stop"|"length"|"abort", ...}
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    output_logprobs: list[float] | None = None
    output_top_logprobs: list[list[tuple[float, int]]] | None = None
    input_logprobs: list[float | None] | None = None  # set once, with the first output
    input_ids_scored: list[int] | None = None
    input_top_logprobs: list[list[tuple[float, int]]] | None = None
    extra: dict[str, Any] | None = None


class TokenBatch(_Msg):
    outs: list[TokenOut]


class ErrorOut(_Msg):
    rid: str
    status: int
    message: str
    param: str | None = None


class StatsOut(_Msg):
    stats: dict[str, Any]


class WorkerReady(_Msg):
    """Sent once by the worker when the model is loaded and the loop runs."""

    context_length: int
    kv_slots: int
    vocab_size: int
    eos_token_ids: list[int]


WorkerOutMsg = Union[TokenBatch, ErrorOut, StatsOut, WorkerReady]


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def decoder(union: Any) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(union)
