"""The primitives a program is written with (SGLang's names and signatures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radixrt.errors import InvalidRequest
from radixrt.lang import ir
from radixrt.lang.choices import ChoicesMethod, resolve, token_length_normalized
from radixrt.lang.program import Program, resolve_backend
from radixrt.lang.sampling import GenOptions


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None) -> Any:
    """Decorator: `@function` or `@function(num_api_spec_tokens=...)` (that option is ignored)."""
    if func is None:
        return lambda f: Program(f, num_api_spec_tokens)
    return Program(func, num_api_spec_tokens)


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: type | str | None = None,
    choices: list[str] | None = None,
    choices_method: ChoicesMethod | str | None = None,
    regex: str | None = None,
    json_schema: str | dict | None = None,
    *,
    max_new_tokens: int | None = None,
) -> ir.Expr:
    """Generate text into variable `name`. With `choices`, it is a `select`.

    `dtype` (int, float, bool, str or their names) constrains the output to SGLang's regex for
    it; the variable holds the text, as in SGLang (`int(s["n"])` makes the number). `regex` /
    `json_schema` constrain it on the server. Options left None take the run's
    defaults (`f.run(max_new_tokens=..., temperature=...)`).
    """
    if choices is not None:
        return select(name, choices, 0.0 if temperature is None else temperature, choices_method)
    if max_tokens is not None and max_new_tokens is not None and max_tokens != max_new_tokens:
        raise InvalidRequest("give max_tokens or max_new_tokens, not both", "max_tokens")
    options = GenOptions.build(
        max_new_tokens=max_tokens if max_tokens is not None else max_new_tokens,
        min_new_tokens=min_tokens,
        n=n,
        stop=stop,
        stop_token_ids=stop_token_ids,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        ignore_eos=ignore_eos,
        return_logprob=return_logprob,
        logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num,
        dtype=dtype,
        regex=regex,
        json_schema=json_schema,
    )
    return ir.Gen(name, options)


def gen_int(name: str | None = None, **kwargs: Any) -> ir.Expr:
    """`gen(name, dtype=int, ...)`: the variable holds the digits as text."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> ir.Expr:
    """`gen(name, dtype=str, ...)`."""
    return gen(name, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: list[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesMethod | str | None = token_length_normalized,
) -> ir.Select:
    """Pick one of `choices` by the model's logprobs of each (one scoring request).

    `choices_method`: token_length_normalized (default), greedy, or
    unconditional_likelihood_normalized. Per-choice scores are in `get_meta_info(name)`.
    """
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise InvalidRequest("select needs a non-empty list of non-empty strings", "choices")
    return ir.Select(name, list(choices), temperature, resolve(choices_method))


def system(expr: Any = None) -> ir.ExprList:
    return ir.role("system", expr)


def user(expr: Any = None) -> ir.ExprList:
    return ir.role("user", expr)


def assistant(expr: Any = None) -> ir.ExprList:
    return ir.role("assistant", expr)


def system_begin() -> ir.RoleBegin:
    return ir.RoleBegin("system")


def system_end() -> ir.RoleEnd:
    return ir.RoleEnd("system")


def user_begin() -> ir.RoleBegin:
    return ir.RoleBegin("user")


def user_end() -> ir.RoleEnd:
    return ir.RoleEnd("user")


def assistant_begin() -> ir.RoleBegin:
    return ir.RoleBegin("assistant")


def assistant_end() -> ir.RoleEnd:
    return ir.RoleEnd("assistant")


def flush_cache(backend: Any = None) -> None:
    """Drop the server's radix cache (benchmarks start cold with this)."""
    resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any]:
    return resolve_backend(backend).get_server_info()
