"""What a benchmark workload is: a DSL program, its seeded inputs, a check of each output, the
outputs that are compared across systems, and (where the prompt determines it) the right answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixrt.lang import Program, ProgramState


@dataclass(frozen=True)
class Batch:
    """One workload run: `program` (shared data already bound) run once per entry of `inputs`;
    `answers[i]`, where the prompt determines it, is program i's right answer."""

    program: Program
    inputs: list[dict[str, Any]]
    answers: list[Any] | None = None


@dataclass(frozen=True)
class Workload:
    """`build(num_programs, seed)` makes the batch; `check(state, inputs)` lists what is wrong
    with one finished program's outputs (empty: well-formed); `outputs(state)` is what the
    program generated, compared across systems when `greedy` (every gen at temperature 0);
    `correct(state, answer)`, where the prompt determines the answer, says whether it is right.

    Sizes: programs per run (`quick_programs` with --quick, else `full_programs`, SGLang's
    default count where the time allows) and programs run one at a time for the single-user
    latency (`interactive_programs`).
    """

    name: str
    description: str
    build: Callable[[int, int], Batch]
    check: Callable[[ProgramState, dict[str, Any]], list[str]]
    outputs: Callable[[ProgramState], dict[str, Any]]
    quick_programs: int
    full_programs: int
    interactive_programs: int = 2
    greedy: bool = True
    correct: Callable[[ProgramState, Any], bool] | None = None


def expect_str(state: ProgramState, name: str, max_len: int | None = None) -> list[str]:
    """Problems with text variable `name`: missing, not a str, or longer than `max_len` chars."""
    try:
        value = state[name]
    except Exception as e:  # noqa: BLE001 - any failure to read is a problem to report
        return [f"{name}: {type(e).__name__}: {e}"]
    if not isinstance(value, str):
        return [f"{name} is {type(value).__name__}, not str"]
    if max_len is not None and len(value) > max_len:
        return [f"{name} has {len(value)} chars, more than {max_len}"]
    return []


def completion_tokens(state: ProgramState, name: str) -> int:
    """Tokens the server generated for gen `name` (from its meta_info)."""
    meta = state.get_meta_info(name) or {}
    return int(meta.get("completion_tokens", 0))


def variables(*names: str) -> Callable[[ProgramState], dict[str, Any]]:
    """`outputs` for a program whose generated text is in variables `names`."""
    return lambda state: {name: state[name] for name in names}
