"""When drafting pays: the cost of a verification row, measured, against a request's acceptance rate.

Cost. A decode step of R rows takes about `fixed + per_row * R` seconds (weights read once per step,
arithmetic and attention per row); `StepCost` fits the two by decayed least squares over the
decode-only steps the scheduler runs. With B requests decoding, one more row pays for itself when
the token it adds comes with probability above its share of a step's time per token:

    P(draft token j accepted) > per_row * B / (fixed + per_row * B)  =: row_cost

(the batch makes B tokens in fixed + per_row * B seconds; the row costs per_row). One request alone
on a CPU pays ~0.1 of a step per extra row; at 32 in flight, rows are most of the step. Until the fit
is ready a step's fixed cost is taken as PRIOR_FIXED_ROWS rows' work (measured here: 6-13). When the
batch size stops varying (a full batch of plain decode rows) the fit cannot tell fixed from per-row
seconds and the last fit stays in use: falling back to a cheap prior there let a full batch draft,
which made the rows vary again, and the policy oscillated (tree_of_thought at 64 rows drafted at a
row cost of 0.25 where the fit said 0.95).

Acceptance. Drafts are accepted as a run: token j counts only if tokens 1..j-1 did. `Acceptance`
keeps a decayed count of accepted draft tokens (hits) and of rejections (misses, one at most per
verification), so alpha = hits / (hits + misses) estimates P(next draft token accepted | the ones
before were), and token j is accepted with probability ~alpha**j. A request drafts the j tokens with
alpha**j > row_cost; when not even one pays it stops, and probes again (a full-length draft) after a
pause that doubles each time the probe fails. A probe drafts as many tokens as a request accepting
PROBE_ALPHA of them would (at least one): the full length where rows are cheap, one token where a
row costs nearly a token (a full batch), so probing never costs much more than it may find.
"""

from __future__ import annotations

from dataclasses import dataclass

DECAY = 0.7  # per verification: the estimate follows the last ~3 verifications
FIRST_PAUSE = 8  # decode steps without drafts after acceptance fell below the row cost
MAX_PAUSE = 128
COST_DECAY = 0.98  # per observed step: the fit follows the last ~50 decode steps
MIN_STEPS = 16  # decode steps observed before the fit is used
MIN_ROW_SPREAD = 0.5  # standard deviation of the observed row counts the fit needs
PRIOR_FIXED_ROWS = 8.0  # until the fit is ready: a step's fixed cost in rows
PROBE_ALPHA = 0.9


@dataclass
class Acceptance:
    """One request's acceptance estimate and pause; see the module docstring."""

    hits: float = 1.0  # prior: alpha 0.5, worth two verifications of evidence
    misses: float = 1.0
    paused: int = 0  # decode steps left without drafts
    pause: int = FIRST_PAUSE  # the next pause's length
    probe: bool = True  # the next draft is full length (a fresh request, or after a pause)

    @property
    def alpha(self) -> float:
        return self.hits / (self.hits + self.misses)

    def draft_len(self, max_tokens: int, row_cost: float) -> int:
        """Draft tokens worth verifying at this decode step (0: none); counts down a pause."""
        if self.paused:
            self.paused -= 1
            return 0
        if self.probe:
            return max(worth(PROBE_ALPHA, row_cost, max_tokens), 1)
        return worth(self.alpha, row_cost, max_tokens)

    def record(self, drafted: int, accepted: int, row_cost: float) -> None:
        """One verification: `accepted` of `drafted` draft tokens matched the model."""
        self.hits = self.hits * DECAY + accepted
        self.misses = self.misses * DECAY + (accepted < drafted)
        self.probe = False
        if worth(self.alpha, row_cost, 1):
            self.pause = FIRST_PAUSE
        else:
            self.paused, self.probe = self.pause, True
            self.pause = min(2 * self.pause, MAX_PAUSE)


def worth(alpha: float, row_cost: float, max_tokens: int) -> int:
    """The largest j <= max_tokens with alpha**j > row_cost (draft token j accepted ~alpha**j)."""
    j, p = 0, alpha
    while j < max_tokens and p > row_cost:
        j, p = j + 1, p * alpha
    return j


class StepCost:
    """seconds ~ fixed + per_row * rows over decode steps, by exponentially decayed least squares."""

    def __init__(self, decay: float = COST_DECAY):
        self.decay = decay
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.last: tuple[float, float] | None = None  # the latest fit the observations allowed

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self.n = self.n * d + 1
        self.sx = self.sx * d + rows
        self.sy = self.sy * d + seconds
        self.sxx = self.sxx * d + rows * rows
        self.sxy = self.sxy * d + rows * seconds

    def fit(self) -> tuple[float, float] | None:
        """(fixed, per_row) seconds, or None until enough steps with different row counts were seen."""
        if self.n < (1 - self.decay**MIN_STEPS) / (1 - self.decay):  # the decayed count of MIN_STEPS steps
            return None
        spread = self.n * self.sxx - self.sx * self.sx  # n^2 * variance of rows
        if spread <= (MIN_ROW_SPREAD * self.n) ** 2:
            return None
        per_row = (self.n * self.sxy - self.sx * self.sy) / spread
        fixed = (self.sy - per_row * self.sx) / self.n
        return (fixed, per_row) if fixed > 0 and per_row > 0 else None

    def row_cost(self, batch_rows: int) -> float:
        """What one more row costs, as the acceptance probability its token needs (module docstring)."""
        self.last = self.fit() or self.last
        rows = max(batch_rows, 1)
        if self.last is None:
            return rows / (PRIOR_FIXED_ROWS + rows)
        fixed, per_row = self.last
        return per_row * rows / (fixed + per_row * rows)
