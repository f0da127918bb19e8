"""radixrt.lang: the frontend DSL (SGLang-compatible) and its clients.

@function
def qa(s, question):
    s += user(question)
    s += assistant(gen("answer", max_tokens=64))
"""

from radixrt.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from radixrt.lang.backends import Backend, RuntimeEndpoint
from radixrt.lang.cache_report import CacheReport
from radixrt.lang.chat_template import ChatTemplate
from radixrt.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from radixrt.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from radixrt.lang.program import Program, get_default_backend, set_default_backend
from radixrt.lang.runtime import Runtime
from radixrt.lang.state import ProgramState, ProgramStateGroup
from radixrt.lang.tracer import TracedProgram

__all__ = [
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "Backend",
    "CacheReport",
    "ChatTemplate",
    "Program",
    "ProgramState",
    "ProgramStateGroup",
    "Runtime",
    "RuntimeEndpoint",
    "TracedProgram",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "get_server_info",
    "greedy_token_selection",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
]
