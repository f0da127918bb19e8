from __future__ import annotations

import logging

import jinja2
import pytest

import radixrt.lang as rl
from radixrt.errors import InvalidRequest
from radixrt.lang.chat_template import ChatTemplate
from radixrt.runtime import protocol as p

from .fake_server import SMOL_TEMPLATE

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ '<turn>' + m['role'] + '\n' + m['content'] + '<end>\n' }}{% endfor %}"
)


def render(template: str, messages: list[dict[str, str]]) -> str:
    return jinja2.Environment().from_string(template).render(messages=messages, add_generation_prompt=False)


def test_smollm2_roles_are_chatml_with_its_default_system_prompt():
    t = ChatTemplate.from_jinja(SMOL_TEMPLATE)
    assert (t.prefix("user"), t.suffix("user")) == ("<|im_start|>user\n", "<|im_end|>\n")
    assert (t.prefix("system"), t.prefix("assistant")) == ("<|im_start|>system\n", "<|im_start|>assistant\n")
    assert t.default_system == SMOL_SYSTEM


@rl.function
def chat(s, system_prompt=None):
    if system_prompt:
        s += rl.system(system_prompt)
    s += rl.user("Hi there")
    s += rl.assistant(rl.gen("reply", max_tokens=8))
    with s.user():
        s += "And " + "more"


def test_program_text_is_the_template_rendering_of_its_messages(server, backend):
    state = chat.run(backend=backend)
    messages = state.messages()
    assert messages[0] == {"role": "system", "content": SMOL_SYSTEM}  # inserted once, by us
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert state.text() == render(SMOL_TEMPLATE, messages[1:])  # the template adds the default itself
    assert state.text().count(SMOL_SYSTEM) == 1
    gen_prompt = server.of_type(p.GenerateRequest)[0].text
    assert gen_prompt.endswith("Hi there<|im_end|>\n<|im_start|>assistant\n")
    assert messages[2]["content"] == state["reply"]


def test_an_explicit_system_prompt_replaces_the_default(server, backend):
    state = chat.run(system_prompt="Be terse.", backend=backend)
    assert SMOL_SYSTEM not in state.text()
    assert state.text() == render(SMOL_TEMPLATE, state.messages())
    assert state.messages()[0] == {"role": "system", "content": "Be terse."}


def test_nested_roles_fail_the_program(server, backend):
    @rl.function
    def prog(s):
        with s.user():
            s += rl.assistant("no")

    with pytest.raises(InvalidRequest, match="cannot nest"):
        prog.run(backend=backend)


def test_begin_end_primitives_match_the_wrapper_form(server, backend):
    @rl.function
    def prog(s):
        s += rl.user_begin() + "hello" + rl.user_end()

    @rl.function
    def wrapped(s):
        s += rl.user("hello")

    assert prog.run(backend=backend).text() == wrapped.run(backend=backend).text()


def test_template_bos_is_left_to_the_tokenizer():
    t = ChatTemplate.from_jinja(LLAMA3_TEMPLATE, eos_token="<|eot_id|>")
    assert t.prefix("system") == "<|start_header_id|>system<|end_header_id|>\n\n"
    assert t.suffix("user") == "<|eot_id|>" and t.default_system is None


def test_template_without_system_role_falls_back_to_plain_roles_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="radixrt.lang.chat_template"):
        t = ChatTemplate.from_jinja(NO_SYSTEM_TEMPLATE)
    assert "System role not supported" in caplog.text
    assert t.render([{"role": "user", "content": "hi"}]) == "User: hi\n"


def test_missing_template_uses_plain_roles(caplog):
    with caplog.at_level(logging.WARNING, logger="radixrt.lang.chat_template"):
        t = ChatTemplate.from_jinja(None)
    assert "no chat template" in caplog.text
    assert (t.prefix("assistant"), t.suffix("assistant")) == ("Assistant: ", "\n")
