"""Per-`gen` options: what the user wrote, merged over the run's defaults into wire parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from radixrt.errors import InvalidRequest
from radixrt.runtime.protocol import SamplingParams

_DTYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}
_LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num")

# `gen(dtype=...)` is sent as these regexes (SGLang's, with its names), as SGLang's RuntimeEndpoint
# sends it: the same program then gets the same text from either frontend.
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""
DTYPE_REGEXES = {"int": REGEX_INT, "float": REGEX_FLOAT, "bool": REGEX_BOOL, "str": REGEX_STR}
NUMBER_STOPS = (" ", "\n")  # an int or float ends at the first space or newline (trimmed)


@dataclass(frozen=True)
class LogprobOptions:
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0


NO_LOGPROBS = LogprobOptions()


@dataclass(frozen=True)
class GenOptions:
    """Every field None means "not given here": the run's default (or the server's) applies."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    n: int | None = None
    regex: str | None = None
    json_schema: str | None = None
    dtype: str | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None

    @classmethod
    def build(cls, **values: Any) -> GenOptions:
        """Normalize user spellings: a str stop, a python dtype, a dict JSON schema."""
        stop = values.get("stop")
        if isinstance(stop, str):
            values["stop"] = [stop]
        elif stop is not None:
            values["stop"] = list(stop)
        if values.get("stop_token_ids") is not None:
            values["stop_token_ids"] = list(values["stop_token_ids"])
        if values.get("dtype") is not None:
            values["dtype"] = dtype_name(values["dtype"])
        schema = values.get("json_schema")
        if schema is not None and not isinstance(schema, str):
            values["json_schema"] = json.dumps(schema)
        return cls(**values)

    def merged_over(self, defaults: GenOptions) -> GenOptions:
        """These options, with `defaults` filling the fields left None."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(defaults, **given)

    def to_sampling(self) -> SamplingParams:
        """Wire sampling parameters (n is fanned out by the interpreter, so always 1 here); a
        dtype goes as its regex, plus a space and a newline as stops for numbers."""
        skip = (*_LOGPROB_FIELDS, "n", "dtype")
        given = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }
        if self.dtype is not None:
            given.update(_dtype_constraint(self.dtype, self.regex, self.json_schema, self.stop or []))
        params = SamplingParams(**given)
        params.verify()
        return params

    def logprob_options(self) -> LogprobOptions:
        return LogprobOptions(
            return_logprob=bool(self.return_logprob),
            logprob_start_len=-1 if self.logprob_start_len is None else self.logprob_start_len,
            top_logprobs_num=self.top_logprobs_num or 0,
        )


def dtype_name(dtype: Any) -> str:
    """`int` / "int" -> "int"; raises InvalidRequest for anything else."""
    name = _DTYPE_NAMES.get(dtype, dtype)
    if name not in _DTYPE_NAMES.values():
        raise InvalidRequest(f"dtype must be one of int, float, str, bool; got {dtype!r}", "dtype")
    return name


def _dtype_constraint(dtype: str, regex: str | None, json_schema: str | None, stop: list[str]) -> dict[str, Any]:
    if regex is not None or json_schema is not None:
        raise InvalidRequest("dtype is a constraint itself: give one of dtype, regex and json_schema", "dtype")
    if dtype not in ("int", "float"):
        return {"regex": DTYPE_REGEXES[dtype]}
    return {"regex": DTYPE_REGEXES[dtype], "stop": [*stop, *(s for s in NUMBER_STOPS if s not in stop)]}
