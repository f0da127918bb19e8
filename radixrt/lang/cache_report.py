"""Per-request cache accounting of one program run (forks included) and where prompts missed.

The server reports, per request, `prompt_tokens` and `cached_tokens`. It always computes the
last prompt token again (its logits are needed), so a request misses when more than that one
token had to be computed. For a miss the report
shows where in the prompt the cached prefix ended: exactly when the server also returns
`cached_chars` in meta_info, otherwise estimated from the cached fraction of the prompt. With
speculative decoding on, each call also shows how many of its draft tokens the model accepted
(`spec_accepted_tokens` / `spec_draft_tokens` in meta_info).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

SNIPPET = 30  # characters shown on each side of a miss


@dataclass(frozen=True)
class CallRecord:
    """One request a program sent. `branch`: "" for the main program, "1", "1.0", ... for forks."""

    kind: str  # "gen" | "select" | "commit"
    name: str | None
    branch: str
    prompt: str
    prompt_tokens: int
    cached_tokens: int
    cached_chars: int | None = None
    draft_tokens: int = 0  # speculative decoding: draft tokens verified for this call
    accepted_drafts: int = 0  # of them, accepted (output without a decode step of their own)

    @property
    def missed(self) -> bool:
        return self.cached_tokens < self.prompt_tokens - 1

    @property
    def miss_position(self) -> int | None:
        """Character offset in `prompt` where the cached prefix ends (None on a full hit)."""
        if not self.missed:
            return None
        if self.cached_chars is not None:
            return self.cached_chars
        return round(len(self.prompt) * self.cached_tokens / max(self.prompt_tokens, 1))

    @property
    def exact(self) -> bool:
        return self.cached_chars is not None

    def snippet(self) -> str:
        """The prompt around the miss, with `⟂` where the cached prefix ends."""
        pos = self.miss_position
        if pos is None:
            return ""
        return (self.prompt[max(0, pos - SNIPPET) : pos] + "⟂" + self.prompt[pos : pos + SNIPPET]).replace("\n", "\\n")


class CallLog:
    """Thread-safe list of CallRecords, shared by a program and its forks."""

    def __init__(self):
        self._records: list[CallRecord] = []
        self._lock = threading.Lock()

    def record(self, kind: str, name: str | None, branch: str, prompt: str, meta_info: dict) -> None:
        rec = CallRecord(
            kind=kind,
            name=name,
            branch=branch,
            prompt=prompt,
            prompt_tokens=int(meta_info.get("prompt_tokens", 0)),
            cached_tokens=int(meta_info.get("cached_tokens", 0)),
            cached_chars=meta_info.get("cached_chars"),
            draft_tokens=int(meta_info.get("spec_draft_tokens", 0)),
            accepted_drafts=int(meta_info.get("spec_accepted_tokens", 0)),
        )
        with self._lock:
            self._records.append(rec)

    def records(self) -> list[CallRecord]:
        with self._lock:
            return list(self._records)


@dataclass(frozen=True)
class CacheReport:
    records: list[CallRecord]

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.records)

    @property
    def cached_tokens(self) -> int:
        return sum(r.cached_tokens for r in self.records)

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def misses(self) -> list[CallRecord]:
        return [r for r in self.records if r.missed]

    @property
    def draft_tokens(self) -> int:
        return sum(r.draft_tokens for r in self.records)

    @property
    def accepted_drafts(self) -> int:
        return sum(r.accepted_drafts for r in self.records)

    def __str__(self) -> str:
        lines = [f"cache: {self.cached_tokens}/{self.prompt_tokens} prompt tokens cached ({self.hit_rate:.0%})"]
        if self.draft_tokens:
            lines[0] += f"; drafts: {self.accepted_drafts}/{self.draft_tokens} accepted"
        for r in self.records:
            where = f"  branch {r.branch}" if r.branch else ""
            line = f"  {r.kind:6} {r.name or '-':16} {r.cached_tokens:>6}/{r.prompt_tokens:<6}{where}"
            if r.draft_tokens:
                line += f"  drafts {r.accepted_drafts}/{r.draft_tokens}"
            if r.missed:
                approx = "" if r.exact else "~"
                line += f"  miss at char {approx}{r.miss_position}: {r.snippet()!r}"
            lines.append(line)
        return "\n".join(lines)
