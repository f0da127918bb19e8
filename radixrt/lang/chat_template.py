"""Chat roles as prefix/suffix strings, derived from the model's jinja chat template.

The template is rendered on conversations of sentinel messages and cut at the sentinels:

    [bos] sys_prefix SYS sys_suffix user_prefix U1 user_suffix asst_prefix A1 asst_suffix
          user_prefix U2 user_suffix asst_prefix A2 asst_suffix

`asst_prefix` is what `add_generation_prompt=True` appends; the others follow by subtraction.
A system message that the template inserts by itself when the conversation has none becomes
`default_system`: the interpreter inserts it once, so it is never duplicated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

logger = logging.getLogger(__name__)

PLAIN_ROLES = {"system": ("System: ", "\n"), "user": ("User: ", "\n"), "assistant": ("Assistant: ", "\n")}
_SYS, _U1, _A1, _U2, _A2 = "RADIXRTSYS0", "RADIXRTUSR1", "RADIXRTAST1", "RADIXRTUSR2", "RADIXRTAST2"
_BOS = "RADIXRTBOS"


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class ChatTemplate:
    """Each role's (prefix, suffix); `default_system` is inserted before a first non-system role."""

    roles: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(PLAIN_ROLES))
    default_system: str | None = None
    name: str = "plain"

    def prefix(self, role: str) -> str:
        return self._role(role)[0]

    def suffix(self, role: str) -> str:
        return self._role(role)[1]

    def _role(self, role: str) -> tuple[str, str]:
        if role not in self.roles:
            raise ValueError(f"unknown chat role {role!r}; one of {sorted(self.roles)}")
        return self.roles[role]

    def render(self, messages: list[dict[str, str]]) -> str:
        """The text the interpreter builds for these messages (default system included)."""
        out = []
        if messages and messages[0]["role"] != "system" and self.default_system is not None:
            out.append(self.prefix("system") + self.default_system + self.suffix("system"))
        for m in messages:
            out.append(self.prefix(m["role"]) + m["content"] + self.suffix(m["role"]))
        return "".join(out)

    @classmethod
    def plain(cls) -> ChatTemplate:
        return cls()

    @classmethod
    def from_jinja(cls, source: str | None, eos_token: str | None = None) -> ChatTemplate:
        """Derive the roles from a jinja chat template; plain "Role: ...\\n" roles with a warning
        when there is no template or it cannot be split into per-role strings. A BOS the template
        writes is left out: the server's tokenizer adds it."""
        if not source:
            logger.warning("the model has no chat template; roles use the plain 'Role: ...' format")
            return cls.plain()
        try:
            return _derive(_Renderer(source, eos_token))
        except Exception as e:  # noqa: BLE001 - any template failure means the same fallback
            logger.warning("cannot derive chat roles from the model's template (%s); using plain 'Role: ...' format", e)
            return cls.plain()


class _Renderer:
    """Renders a chat template the way transformers' apply_chat_template does."""

    def __init__(self, source: str, eos_token: str | None):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, indent=indent, ensure_ascii=False)
        self._template = env.from_string(source)
        self.eos = eos_token or ""

    def __call__(self, turns: list[tuple[str, str]], add_generation_prompt: bool = False) -> str:
        messages = [{"role": r, "content": c} for r, c in turns]
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=_BOS, eos_token=self.eos
        )
        # NOTE: the server's tokenizer adds BOS itself (as it does for any prompt); a BOS
        # written by the template would be doubled. A sentinel finds it whatever its spelling.
        return text.removeprefix(_BOS)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _between(text: str, start: str | None, end: str | None) -> str:
    lo = 0 if start is None else text.index(start) + len(start)
    hi = len(text) if end is None else text.index(end, lo)
    return text[lo:hi]


def _strip_end(text: str, tail: str, what: str) -> str:
    if not text.endswith(tail):
        raise TemplateError(f"{what}: {text!r} does not end with {tail!r}")
    return text[: len(text) - len(tail)]


def _strip_start(text: str, head: str, what: str) -> str:
    if not text.startswith(head):
        raise TemplateError(f"{what}: {text!r} does not start with {head!r}")
    return text[len(head) :]


def _derive(render: _Renderer) -> ChatTemplate:
    turns = [("system", _SYS), ("user", _U1), ("assistant", _A1), ("user", _U2), ("assistant", _A2)]
    full = render(turns)
    asst_prefix = _strip_start(render(turns[:4], True), render(turns[:4]), "generation prompt")
    asst_suffix = _between(full, _A2, None)
    user_prefix = _strip_start(_between(full, _A1, _U2), asst_suffix, "assistant suffix")
    user_suffix = _strip_end(_between(full, _U2, _A2), asst_prefix, "user suffix")
    roles = {
        "system": (_between(full, None, _SYS), _strip_end(_between(full, _SYS, _U1), user_prefix, "system suffix")),
        "user": (user_prefix, user_suffix),
        "assistant": (asst_prefix, asst_suffix),
    }
    template = ChatTemplate(roles, _default_system(render, roles), name="jinja")
    _check(render, template)
    return template


def _default_system(render: _Renderer, roles: dict[str, tuple[str, str]]) -> str | None:
    head = _between(render([("user", _U1)]), None, _U1)
    block = _strip_end(head, roles["user"][0], "first user message")
    if not block:
        return None
    sys_prefix, sys_suffix = roles["system"]
    return _strip_end(_strip_start(block, sys_prefix, "default system"), sys_suffix, "default system")


def _check(render: _Renderer, template: ChatTemplate) -> None:
    """The derived roles must reproduce the template on a conversation they were not cut from."""
    for turns in ([("user", "hi"), ("assistant", "hello"), ("user", "ok")], [("system", "be brief"), ("user", "hi")]):
        messages = [{"role": r, "content": c} for r, c in turns]
        if template.render(messages) != render(turns):
            raise TemplateError(f"derived roles do not reproduce the template on {turns}")
