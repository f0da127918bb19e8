"""Per-request sampling parameters (SGLang's names), validated once at the edge."""

from __future__ import annotations

import msgspec

from radixrt.errors import InvalidRequest

GRAMMAR_FIELDS = ("regex", "json_schema", "choices", "dtype")
DTYPES = ("int", "float", "bool", "str")


class SamplingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    regex: str | None = None
    json_schema: str | None = None
    choices: list[str] | None = None
    dtype: str | None = None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def grammar_key(self) -> tuple[str, str] | None:
        """(kind, source) of this request's grammar, or None when unconstrained."""
        for kind in GRAMMAR_FIELDS:
            value = getattr(self, kind)
            if value is not None:
                return kind, value if isinstance(value, str) else msgspec.json.encode(value).decode()
        return None

    def verify(self, max_new_tokens_limit: int | None = None) -> None:
        """Raise InvalidRequest naming the first bad field."""
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 0),
            ("min_new_tokens", 0 <= self.min_new_tokens <= max(self.max_new_tokens, 0)),
            ("temperature", 0.0 <= self.temperature <= 100.0),
            ("top_p", 0.0 < self.top_p <= 1.0),
            ("top_k", self.top_k == -1 or self.top_k >= 1),
            ("min_p", 0.0 <= self.min_p <= 1.0),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0),
            ("n", 1 <= self.n <= 128),
            ("stop_token_ids", all(t >= 0 for t in self.stop_token_ids)),
            ("stop", all(isinstance(s, str) and s for s in self.stop)),
            ("dtype", self.dtype is None or self.dtype in DTYPES),
            ("choices", self.choices is None or (len(self.choices) > 0 and all(self.choices))),
        ]
        for field, ok in checks:
            if not ok:
                raise InvalidRequest(f"invalid sampling parameter {field}={getattr(self, field)!r}", field)
        if max_new_tokens_limit is not None and self.max_new_tokens > max_new_tokens_limit:
            raise InvalidRequest(
                f"max_new_tokens={self.max_new_tokens} exceeds the limit {max_new_tokens_limit}",
                "max_new_tokens",
            )
        grammars = [k for k in GRAMMAR_FIELDS if getattr(self, k) is not None]
        if len(grammars) > 1:
            raise InvalidRequest(f"at most one of {GRAMMAR_FIELDS} may be set, got {grammars}", grammars[1])
