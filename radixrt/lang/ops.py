"""How each kind of expression runs: one method per kind, mixed into `StreamExecutor`.

Every request carries the full program text so far as its prompt: the server's radix cache
turns that into a prefix hit, so the DSL never manages KV state itself.
"""

from __future__ import annotations

from radixrt.errors import InvalidRequest
from radixrt.lang import choices, ir
from radixrt.lang.sampling import LogprobOptions
from radixrt.runtime.protocol import GenerateResult, SamplingParams


class Ops:
    """Needs from its host: backend, defaults, stream, log, branch, text_, messages_, cur_role,
    role_begin, scope_begin, and the methods append_text, assign, set_generated, fan_out."""

    def execute(self, item: ir.Expr) -> None:
        handler = getattr(self, "_run_" + type(item).__name__.lower(), None)
        if handler is None:
            raise TypeError(f"cannot execute {type(item).__name__}")
        handler(item)

    def _run_text(self, e: ir.Text) -> None:
        self.append_text(e.value)

    def _run_setvar(self, e: ir.SetVar) -> None:
        self.assign(e.name, e.value, e.meta, has_meta=e.meta is not None)

    # ---- gen --------------------------------------------------------------------------------

    def _run_gen(self, e: ir.Gen) -> None:
        opts = e.options.merged_over(self.defaults)
        sampling, logprobs = opts.to_sampling(), opts.logprob_options()
        prompt = self.text_
        if (opts.n or 1) > 1:
            self._gen_n(e.name, prompt, sampling, logprobs, opts.n)
            return
        on_chunk = (lambda piece: self.append_text(piece, e.name)) if self.stream else None
        result = self.backend.generate(prompt, sampling, logprobs, on_chunk)
        self.log.record("gen", e.name, self.branch, prompt, result.meta_info)
        self.set_generated(prompt, result.text, e.name)
        self.assign(e.name, result.text, result.meta_info, has_meta=True)  # typed gens too: SGLang stores text

    def _gen_n(self, name: str | None, prompt: str, sampling: SamplingParams, logprobs: LogprobOptions, n: int):
        """n samples: commit the prompt once, then n requests at once. The variable is the list
        of the n texts; the program text continues with the first."""
        self._commit(prompt)
        results: list[GenerateResult] = self.fan_out(lambda _: self.backend.generate(prompt, sampling, logprobs), n)
        for r in results:
            self.log.record("gen", name, self.branch, prompt, r.meta_info)
        self.set_generated(prompt, results[0].text, name)
        self.assign(name, [r.text for r in results], [r.meta_info for r in results], has_meta=True)

    # ---- select -----------------------------------------------------------------------------

    def _run_select(self, e: ir.Select) -> None:
        method = choices.resolve(e.choices_method)
        prompt = self.text_
        scored = self.backend.score(prompt, list(e.choices)).scores
        if len(scored) != len(e.choices):
            raise RuntimeError(f"server scored {len(scored)} continuations, expected {len(e.choices)}")
        logprobs = [s.logprobs for s in scored]
        unconditional = None
        if method.needs_unconditional:
            unconditional = [s.logprobs for s in self.backend.score("", list(e.choices)).scores]
        decision = method.decide(logprobs, unconditional, e.temperature)
        first = {"prompt_tokens": scored[0].prompt_tokens, "cached_tokens": scored[0].cached_tokens}
        self.log.record("select", e.name, self.branch, prompt + e.choices[0], first)
        choice = e.choices[decision.index]
        self.set_generated(prompt, choice, e.name)
        meta = {
            "choices_method": method.name,
            "scores": decision.scores,
            "normalized_prompt_logprobs": [sum(lp) / len(lp) if lp else float("-inf") for lp in logprobs],
            "token_logprobs": logprobs,
            "unconditional_token_logprobs": unconditional,
            "prompt_tokens": [s.prompt_tokens for s in scored],
            "cached_tokens": [s.cached_tokens for s in scored],
        }
        self.assign(e.name, choice, meta, has_meta=True)

    # ---- roles, scopes, commits --------------------------------------------------------------

    def _run_rolebegin(self, e: ir.RoleBegin) -> None:
        if self.cur_role is not None:
            raise InvalidRequest(f"role {e.role!r} begins inside role {self.cur_role!r}; roles cannot nest", "role")
        template = self.backend.chat_template()
        if not self.messages_ and e.role != "system" and template.default_system is not None:
            self._run_rolebegin(ir.RoleBegin("system"))
            self.append_text(template.default_system)
            self._run_roleend(ir.RoleEnd("system"))
        self.append_text(template.prefix(e.role))
        self.cur_role, self.role_begin = e.role, len(self.text_)

    def _run_roleend(self, e: ir.RoleEnd) -> None:
        if self.cur_role != e.role:
            raise InvalidRequest(f"role {e.role!r} ends but {self.cur_role!r} is open", "role")
        content = self.text_[self.role_begin :]
        self.append_text(self.backend.chat_template().suffix(e.role))
        self.messages_.append({"role": e.role, "content": content})
        self.cur_role = None

    def _run_varscopebegin(self, e: ir.VarScopeBegin) -> None:
        self.scope_begin[e.name] = len(self.text_)

    def _run_varscopeend(self, e: ir.VarScopeEnd) -> None:
        self.assign(e.name, self.text_[self.scope_begin.pop(e.name) :])

    def _run_commitprefix(self, e: ir.CommitPrefix) -> None:
        self._commit(self.text_)

    def _commit(self, prompt: str) -> None:
        """Prefill-only request: the server caches `prompt` and generates nothing."""
        if not prompt or not self.backend.caches_prefixes():
            return  # nothing to share: a fork before any text, or a server that keeps no cache
        result = self.backend.generate(prompt, SamplingParams(max_new_tokens=0))
        self.log.record("commit", None, self.branch, prompt, result.meta_info)
