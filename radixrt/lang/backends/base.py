"""What the interpreter needs from a model server."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.sampling import NO_LOGPROBS, LogprobOptions
from radixrt.runtime.protocol import GenerateResult, SamplingParams, ScoreResult

_program = threading.local()


def set_current_program(program_id: str | None) -> None:
    """The program whose steps this thread runs (each program state runs on its own thread)."""
    _program.id = program_id


def current_program() -> str | None:
    """The id a backend sends with a request, so a cluster keeps a program on one replica."""
    return getattr(_program, "id", None)


class Backend(ABC):
    """A model behind some transport. Methods may be called from many threads at once."""

    @abstractmethod
    def chat_template(self) -> ChatTemplate:
        """The model's chat roles (fetched once)."""

    @abstractmethod
    def generate(
        self,
        prompt: str,
        sampling: SamplingParams,
        logprobs: LogprobOptions = NO_LOGPROBS,
        on_chunk: Callable[[str], None] | None = None,
    ) -> GenerateResult:
        """Complete `prompt`. With `on_chunk`, stream: it gets each new piece of text in order.

        `sampling.max_new_tokens == 0` is a prefill-only request: it returns once the prompt is
        cached (a fork's shared prefix). Server errors raise a RadixRTError subclass.
        """

    @abstractmethod
    def score(self, prefix: str, continuations: list[str]) -> ScoreResult:
        """Logprobs of each continuation's tokens after `prefix`, in one request."""

    def flush_cache(self) -> None:
        raise NotImplementedError

    def get_server_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def caches_prefixes(self) -> bool:
        """Whether a prefill-only request leaves its prompt cached (fork sends one only then)."""
        return True

    def shutdown(self) -> None:
        """Release connections; the backend is unusable afterwards."""
