"""SGLang's native `/generate` shape: the JSON body in, protocol requests out, and back.

Accepts every field SGLang's frontend client sends; `null` means the default and unknown extra
fields are ignored. Fields naming features radixrt does not have are rejected when set.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from radixrt.errors import InvalidRequest
from radixrt.runtime.http.common import error_json
from radixrt.runtime.protocol import ErrorReply, GenerateChunk, GenerateRequest, GenerateResult, SamplingParams

SAMPLING_FIELDS = frozenset(SamplingParams.__struct_fields__)
UNSUPPORTED = ("image_data", "input_embeds", "lora_path", "custom_logit_processor", "return_hidden_states")
UNSUPPORTED_SAMPLING = ("stop_regex", "custom_params", "ebnf", "structural_tag")
PER_PROMPT = (
    ("rid", str),
    ("return_logprob", bool),
    ("logprob_start_len", int),
    ("top_logprobs_num", int),
    ("cache_salt", str),  # vLLM's field: a cache namespace
    ("pin_s", float),  # keep the prompt cached this long after the request
)
_PATH = re.compile(r"at `\$\.?(\w+)?")


@dataclass
class GenerateCall:
    """One /generate body: its requests, and whether the answer is a list."""

    requests: list[GenerateRequest]
    is_batch: bool
    stream: bool


def parse_generate(body: Any, api_key: str | None = None) -> GenerateCall:
    """Turn a /generate JSON body into GenerateRequests; raises InvalidRequest naming the field.
    `api_key`: the key the call authenticated with (it selects the tenant's cache salt)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise InvalidRequest(f"{name} is not supported", name)
    prompts, is_batch = _prompts(body)
    k = len(prompts)
    if k == 0:
        raise InvalidRequest("the prompt list is empty", "text" if body.get("text") is not None else "input_ids")
    items = {"sampling": [sampling_params(p) for p in _per_item(body, "sampling_params", k, is_batch)]}
    for name, tp in PER_PROMPT:
        items[name] = [_typed(v, tp, name) for v in _per_item(body, name, k, is_batch)]
    stream = bool(_typed(body.get("stream"), bool, "stream"))
    requests = []
    for i, (text, ids) in enumerate(prompts):
        fields = {name: values[i] for name, values in items.items() if values[i] is not None}
        fields.setdefault("rid", uuid.uuid4().hex)
        requests.append(GenerateRequest(text=text, input_ids=ids, stream=stream, api_key=api_key, **fields))
    return GenerateCall(requests, is_batch, stream)


def _prompts(body: dict[str, Any]) -> tuple[list[tuple[str | None, list[int] | None]], bool]:
    text, ids = body.get("text"), body.get("input_ids")
    if (text is None) == (ids is None):
        raise InvalidRequest("exactly one of text and input_ids must be given", "text")
    if text is not None:
        if isinstance(text, str):
            return [(text, None)], False
        texts = _typed(text, list[str], "text")
        return [(t, None) for t in texts], True
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return [(None, row) for row in _typed(ids, list[list[int]], "input_ids")], True
    return [(None, _typed(ids, list[int], "input_ids"))], False


def _per_item(body: dict[str, Any], name: str, k: int, is_batch: bool) -> list[Any]:
    """A field given once for all prompts, or (batch only) as a list with one value per prompt."""
    value = body.get(name)
    if is_batch and isinstance(value, list):
        if len(value) != k:
            raise InvalidRequest(f"{name} has {len(value)} entries for {k} prompts", name)
        return value
    return [value] * k


def _typed(value: Any, tp: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError as e:
        raise InvalidRequest(f"invalid {name}: {e}", name) from None


def sampling_params(raw: Any) -> SamplingParams:
    """SGLang's `sampling_params` dict as SamplingParams, validated field by field."""
    if raw is None:
        return SamplingParams()
    if not isinstance(raw, dict):
        raise InvalidRequest("sampling_params must be a JSON object", "sampling_params")
    for name in UNSUPPORTED_SAMPLING:
        if raw.get(name) not in (None, [], "", {}):
            raise InvalidRequest(f"sampling parameter {name} is not supported", name)
    clean = {k: v for k, v in raw.items() if v is not None and k in SAMPLING_FIELDS}
    if isinstance(clean.get("stop"), str):
        clean["stop"] = [clean["stop"]]
    if isinstance(clean.get("json_schema"), dict):
        clean["json_schema"] = msgspec.json.encode(clean["json_schema"]).decode()
    try:
        params = msgspec.convert(clean, SamplingParams)
    except msgspec.ValidationError as e:
        match = _PATH.search(str(e))
        field = match.group(1) if match and match.group(1) else "sampling_params"
        raise InvalidRequest(f"invalid sampling parameter {field}: {e}", field) from None
    return params  # range checks happen in TokenizerManager.tokenize


# ---- answers -------------------------------------------------------------------------------


def result_json(msg: GenerateResult | GenerateChunk) -> dict[str, Any]:
    return {"text": msg.text, "output_ids": msg.output_ids, "meta_info": msg.meta_info}


def reply_error_json(err: ErrorReply) -> dict[str, Any]:
    return error_json(err.status, err.message, err.param)


class StreamText:
    """SGLang streams the WHOLE text so far in every event; chunks carry only the new piece."""

    def __init__(self) -> None:
        self.text: dict[int, str] = {}
        self.ids: dict[int, list[int]] = {}

    def chunk_event(self, index: int, chunk: GenerateChunk, with_index: bool) -> dict[str, Any]:
        self.text[index] = self.text.get(index, "") + chunk.text
        self.ids.setdefault(index, []).extend(chunk.output_ids)
        event = {"text": self.text[index], "output_ids": list(self.ids[index]), "meta_info": chunk.meta_info}
        return {**event, "index": index} if with_index else event

    def result_event(self, index: int, result: GenerateResult, with_index: bool) -> dict[str, Any] | None:
        """The final result, unless the chunks already showed exactly this text and these ids."""
        if self.text.get(index) == result.text and self.ids.get(index) == result.output_ids:
            return None
        self.text[index], self.ids[index] = result.text, list(result.output_ids)
        event = result_json(result)
        return {**event, "index": index} if with_index else event
