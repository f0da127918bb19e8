"""Tool calling: how tools reach the prompt, the grammars a call is generated under, and parsing.

Calls use the Hermes / Qwen2.5 format: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.
A chat template that knows tools (it mentions `tools`) renders them itself; for one that does not
(SmolLM2's), the tools go into the system message and the conversation's calls and tool results
are written in the same format as plain messages.

Arguments are always generated under a JSON schema, so they are valid for the function:
- a named function or `required`: the prompt ends with `<tool_call>\\n` and the completion is
  constrained to `{"name": NAME, "arguments": PARAMETERS}` (anyOf over the tools for `required`).
- `auto`: a first constrained step lets the model either answer in text (which cannot start
  with `<`) or write `<tool_call>` and stop; in the second case a `required` step follows on
  the same prompt (its prefix is already in the radix cache).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from radixrt.runtime.openai.protocol import Message, NamedToolChoice, Tool, ToolCall

CALL_START = "<tool_call>"
CALL_PROMPT = CALL_START + "\n"  # what a forced call's prompt ends with
# The auto decision: the call marker (then EOS), or a text answer that does not start with `<`.
# NOTE: NUL is excluded because the grammar compiler spells EOS as a trailing NUL byte.
AUTO_REGEX = r"<tool_call>|([^<\x00][^\x00]*)?"
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def template_knows_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in str(chat_template)


def tool_system_prompt(tools: list[Tool]) -> str:
    """Tool instructions for a model whose chat template does not render tools."""
    specs = "\n".join(json.dumps(tool_spec(t)) for t in tools)
    return (
        "You can call these functions. To call one, reply with only\n"
        f'{CALL_START}\n{{"name": <function name>, "arguments": <arguments as a JSON object>}}\n</tool_call>\n'
        f"Functions:\n{specs}"
    )


def tool_spec(tool: Tool) -> dict[str, Any]:
    f = tool.function
    spec: dict[str, Any] = {"name": f.name, "parameters": f.parameters or ANY_OBJECT}
    if f.description:
        spec["description"] = f.description
    return {"type": "function", "function": spec}


def template_messages(messages: list[Message], tools: list[Tool] | None, native: bool) -> list[dict[str, Any]]:
    """Messages as dicts for `apply_chat_template`.

    native: the template renders tools, calls and tool results itself (arguments as dicts).
    Otherwise calls become assistant text, tool results user text, and the tool list goes into
    the system message.
    """
    out = [_native(m) if native else _plain(m) for m in messages]
    if tools and not native:
        prompt = tool_system_prompt(tools)
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _native(m: Message) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function", "function": _call_data(c)} for c in m.tool_calls]
    if m.tool_call_id is not None:
        msg["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        msg["name"] = m.name
    return msg


def _plain(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"}
    text = m.text()
    for c in m.tool_calls or []:
        text += ("\n" if text else "") + f"{CALL_START}\n{json.dumps(_call_data(c))}\n</tool_call>"
    return {"role": "system" if m.role == "developer" else m.role, "content": text}


def _call_data(call: ToolCall) -> dict[str, Any]:
    """A call's name and arguments, the arguments as the object templates expect (a string that
    is not JSON stays a string)."""
    try:
        arguments = json.loads(call.function.arguments)
    except json.JSONDecodeError:
        arguments = call.function.arguments
    return {"name": call.function.name, "arguments": arguments}


def call_schema(tools: list[Tool], choice: Any) -> dict[str, Any]:
    """The JSON schema of a call's `{"name", "arguments"}` object: one tool, or any of them."""
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    shapes = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters or ANY_OBJECT},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}


def parse_call(text: str) -> tuple[str, str] | None:
    """(name, arguments as a JSON string) of a generated call object, or None if it is incomplete."""
    try:
        call = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
        return None
    return call["name"], json.dumps(call["arguments"])


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def is_call_marker(text: str) -> bool:
    """Whether the auto step's text so far is the call marker (text answers never start with `<`)."""
    return text.startswith("<")
