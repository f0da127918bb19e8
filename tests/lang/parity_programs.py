"""One set of DSL programs that runs unchanged on radixrt's frontend and on SGLang's.

`run_all(sgl, backend)` takes the frontend module (`radixrt` or `sglang`) and its backend, runs
every program greedily and returns what each left: the program text, its variables, and for the
streamed one the pieces joined. JSON-able, so SGLang's side can run in a subprocess (its client
has no timeouts: a subprocess can be killed). Every chat opens with a system message: SGLang's
chatml template has no default system prompt, radixrt inserts the model's own (SmolLM2's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SYSTEM = "You are a terse assistant. Answer in a few words."
VARIABLES = {
    "chat_and_select": ["fruit", "sky"],
    "typed_gens": ["legs", "pi", "wet", "word", "year"],
    "fork_gather": ["idea", "verdict"],
    "fork_concate": ["summary"],
    "var_scope": ["reasoning", "answer"],
    "stream": ["story"],
    "set_after_end": ["n", "twice", "note"],
}


def build(sgl: Any) -> dict[str, Any]:
    """The programs, written once, with `sgl` being either frontend."""

    @sgl.function
    def chat_and_select(s):
        s += sgl.system(SYSTEM)
        s += sgl.user("Name a fruit.")
        s += sgl.assistant(sgl.gen("fruit", max_tokens=8))
        s += sgl.user("Is the sky green?")
        s += sgl.assistant(sgl.select("sky", choices=["yes", "no", "sometimes"]))

    @sgl.function
    def typed_gens(s):
        s += sgl.system(SYSTEM)
        s += sgl.user("How many legs does a cat have?")
        s += sgl.assistant(sgl.gen_int("legs", max_tokens=4))
        s += sgl.user("What is pi?")
        s += sgl.assistant(sgl.gen("pi", dtype=float, max_tokens=6))
        s += sgl.user("Is water wet? True or False.")
        s += sgl.assistant(sgl.gen("wet", dtype=bool))
        s += sgl.user("Say one word in quotes.")
        s += sgl.assistant(sgl.gen_string("word", max_tokens=8))
        s += "Year: " + sgl.gen("year", dtype=int, stop=".", max_tokens=5)

    @sgl.function
    def fork_gather(s, topic):
        s += sgl.system(SYSTEM)
        s += sgl.user(f"Give one tip about {topic}.")
        forks = s.fork(3)
        for i, f in enumerate(forks):
            f += sgl.assistant(f"Tip {i + 1}: " + sgl.gen("idea", max_tokens=10, stop="\n"))
        forks.join()
        s += sgl.user("Which tip is best? " + " / ".join(s["idea"]))
        s += sgl.assistant(sgl.gen("verdict", max_tokens=10))

    @sgl.function
    def fork_concate(s):
        s += "A short report on the weather.\n"
        forks = s.fork(2)
        for f, part in zip(forks, ["Morning", "Evening"]):
            f += f"{part}: " + sgl.gen("part", max_tokens=8, stop="\n") + "\n"
        forks.join(mode="concate_and_append")
        s += "Summary: " + sgl.gen("summary", max_tokens=10, stop="\n")

    @sgl.function
    def var_scope(s):
        s += sgl.system(SYSTEM)
        s += sgl.user("What is 2 + 3? Think, then answer.")
        with s.assistant():
            with s.var_scope("reasoning"):
                s += "Let me think: " + sgl.gen("thought", max_tokens=12, stop="\n")
            s += "\nSo the answer is " + sgl.gen("answer", max_tokens=4)

    @sgl.function
    def stream(s):
        s += sgl.system(SYSTEM)
        s += sgl.user("Tell a very short story about a fox.")
        s += sgl.assistant(sgl.gen("story", max_tokens=16))

    @sgl.function
    def set_after_end(s):
        s += sgl.system(SYSTEM)
        s += sgl.user("How many days are in a week?")
        s += sgl.assistant(sgl.gen_int("n", max_tokens=3))

    return {
        "chat_and_select": (chat_and_select, {}),
        "typed_gens": (typed_gens, {}),
        "fork_gather": (fork_gather, {"topic": "saving energy"}),
        "fork_concate": (fork_concate, {}),
        "var_scope": (var_scope, {}),
        "stream": (stream, {}),
        "set_after_end": (set_after_end, {}),
    }


def run_all(sgl: Any, backend: Any) -> dict[str, dict[str, Any]]:
    """Every program's result on this frontend: {name: {"text", "variables", ...}}."""
    results = {}
    for name, (program, arguments) in build(sgl).items():
        finish = _FINISHERS.get(name, _plain)
        results[name] = finish(program, arguments, backend, VARIABLES[name])
    return results


def _plain(program: Any, arguments: dict[str, Any], backend: Any, names: list[str]) -> dict[str, Any]:
    state = program.run(backend=backend, temperature=0, **arguments)
    return {"text": state.text(), "variables": {n: state[n] for n in names}}


def _streamed(program: Any, arguments: dict[str, Any], backend: Any, names: list[str]) -> dict[str, Any]:
    state = program.run(backend=backend, temperature=0, stream=True, **arguments)
    story = "".join(state.text_iter("story"))  # the variable's pieces, as they come
    whole = "".join(state.text_iter())
    return {"text": state.text(), "variables": {n: state[n] for n in names}, "streamed": [story, whole]}


def _post_processed(program: Any, arguments: dict[str, Any], backend: Any, names: list[str]) -> dict[str, Any]:
    """SGLang programs post-process an ended program's state by setting its variables."""
    state = program.run(backend=backend, temperature=0, **arguments)
    state["n"] = int(state["n"])
    state["twice"] = 2 * state["n"]
    state["note"] = "set after the end"
    return {"text": state.text(), "variables": {n: state[n] for n in names}}


_FINISHERS: dict[str, Callable[..., dict[str, Any]]] = {"stream": _streamed, "set_after_end": _post_processed}
