"""`RuntimeEndpoint`: the backend for a radixrt (or SGLang) server at a URL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from radixrt.errors import InvalidRequest
from radixrt.lang.backends.base import Backend, current_program
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.sampling import NO_LOGPROBS, LogprobOptions
from radixrt.runtime.protocol import (
    FlushCache,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    GetModelInfo,
    GetStats,
    ModelInfo,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
)


def new_rid() -> str:
    return uuid.uuid4().hex


class RuntimeEndpoint(Backend):
    """A server at `url`: "tcp://host:port" or "ipc://path" (ZMQ, the native protocol) or
    "http://host:port" (SGLang's `/generate` API). `api_key` is sent with every request;
    `timeout` bounds the wait for each reply (seconds, None: forever). `cache_salt` puts every
    request in that cache namespace (no cached prefix is shared with other salts); `pin_s` keeps
    each generation's prompt cached that many seconds after it (a session's prefix between turns)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | None = None,
        cache_salt: str | None = None,
        pin_s: float | None = None,
    ):
        self.url, self.api_key = url, api_key
        self.cache_salt, self.pin_s = cache_salt, pin_s
        if url.startswith(("tcp://", "ipc://")):
            from radixrt.lang.backends.client import RuntimeClient

            self.client = RuntimeClient(url, timeout=timeout, api_key=api_key)
        elif url.startswith(("http://", "https://")):
            from radixrt.lang.backends.http_client import HttpClient

            self.client = HttpClient(url, api_key=api_key, timeout=timeout)
        else:
            raise InvalidRequest(f"unsupported backend url {url!r}: use tcp://, ipc:// or http://", "url")
        self._info: ModelInfo | None = None
        self._template: ChatTemplate | None = None
        self._caches: bool | None = None
        self._info_lock = threading.Lock()

    def model_info(self) -> ModelInfo:
        with self._info_lock:
            if self._info is None:
                self._info = self.client.call(GetModelInfo())
            return self._info

    def chat_template(self) -> ChatTemplate:
        info = self.model_info()
        with self._info_lock:
            if self._template is None:
                self._template = ChatTemplate.from_jinja(info.chat_template, info.eos_token)
            return self._template

    def generate(
        self,
        prompt: str,
        sampling: SamplingParams,
        logprobs: LogprobOptions = NO_LOGPROBS,
        on_chunk: Callable[[str], None] | None = None,
    ) -> GenerateResult:
        request = GenerateRequest(
            rid=new_rid(),
            text=prompt,
            sampling=sampling,
            return_logprob=logprobs.return_logprob,
            logprob_start_len=logprobs.logprob_start_len,
            top_logprobs_num=logprobs.top_logprobs_num,
            stream=on_chunk is not None,
            cache_salt=self.cache_salt,
            pin_s=self.pin_s,
            program_id=current_program(),
        )
        if on_chunk is None:
            return self.client.call(request)
        for reply in self.client.stream(request):
            if isinstance(reply, GenerateChunk):
                on_chunk(reply.text)
            else:
                return reply
        raise RuntimeError("stream ended without a result")  # stream() always ends with a result

    def score(self, prefix: str, continuations: list[str]) -> ScoreResult:
        request = ScoreRequest(rid=new_rid(), prefix=prefix, continuations=continuations, cache_salt=self.cache_salt)
        return self.client.call(request)

    def flush_cache(self) -> None:
        self.client.call(FlushCache())

    def get_server_info(self) -> dict[str, Any]:
        return self.client.call(GetStats()).stats

    def caches_prefixes(self) -> bool:
        """False when the server runs with --disable-radix-cache (asked once)."""
        if self._caches is None:
            info = self.get_server_info()
            self._caches = bool(info.get("radix_cache", not info.get("disable_radix_cache", False)))
        return self._caches

    def shutdown(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RuntimeEndpoint({self.url!r})"
