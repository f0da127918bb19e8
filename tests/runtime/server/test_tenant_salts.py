"""Tenant salts and API key lists without a server: how keys are read (flags, file, environment),
what salt each request gets, and the request fields that carry salts and pins."""

from __future__ import annotations

import argparse

import pytest

from radixrt.envs import API_KEY as API_KEY_ENV
from radixrt.errors import InvalidRequest
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.http.generate import parse_generate
from radixrt.runtime.server.tenants import MAX_SALT_CHARS, effective_salt, matching_key
from radixrt.runtime.server.worker import worker_argv


def parsed(argv: list[str], env: dict[str, str] | None = None) -> ServerArgs:
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli(parser.parse_args(argv), env or {})


def test_keys_come_from_repeated_flags_a_file_or_the_environment(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\nkey-b\n\n  key-c  \nkey-a\n")
    args = parsed(["--api-key", "key-a", "--api-key", "key-b", "--api-key-file", str(keys)])
    assert args.api_key == "key-a" and args.api_keys == ("key-a", "key-b", "key-c")
    assert parsed([], {API_KEY_ENV: "env-1\nenv-2\n"}).api_keys == ("env-1", "env-2")
    assert parsed(["--api-key", "only"]).api_keys == ("only",)  # the single key works as before
    assert parsed([]).api_keys == () and parsed([]).api_key is None
    assert ServerArgs(api_key="k").api_keys == ("k",)


def test_bad_key_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no key"):
        ServerArgs(api_key_file=str(empty))
    with pytest.raises(ValueError, match="cannot read --api-key-file"):
        ServerArgs(api_key_file=str(tmp_path / "missing"))


def test_no_key_reaches_the_worker_or_a_public_view(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("file-key\n")
    args = ServerArgs(api_key="flag-key", api_key_file=str(keys))
    assert "flag-key" not in " ".join(worker_argv(args, "/tmp/x")) and "file-key" not in " ".join(
        worker_argv(args, "/tmp/x")
    )
    clean = args.without_api_keys()
    assert clean.api_key is None and clean.api_keys == () and clean.api_key_file == ""


def test_each_key_has_its_own_salt_and_a_request_salt_combines_with_it():
    assert effective_salt(None, None) == "" and effective_salt(None, "") == ""
    salts = {
        effective_salt(key, salt)
        for key in (None, "key-a", "key-b")
        for salt in (None, "alice", "bob")
        if (key, salt) != (None, None)
    }
    assert len(salts) == 8 and all(len(s) == 32 for s in salts)
    assert effective_salt("key-a", "alice") == effective_salt("key-a", "alice")
    # the parts are length-prefixed: shifting characters between key and salt gives another salt
    assert effective_salt("ab", "c") != effective_salt("a", "bc")
    assert not any("key-a" in s or "alice" in s for s in salts)
    with pytest.raises(InvalidRequest):
        effective_salt(None, "x" * (MAX_SALT_CHARS + 1))


def test_matching_key_finds_the_configured_key():
    assert matching_key("b", ("a", "b")) == "b"
    assert matching_key("c", ("a", "b")) is None and matching_key(None, ("a",)) is None


def test_generate_bodies_carry_salt_pin_and_the_callers_key():
    call = parse_generate({"text": ["x", "y"], "cache_salt": "s", "pin_s": 5}, api_key="k")
    assert [(r.cache_salt, r.pin_s, r.api_key) for r in call.requests] == [("s", 5.0, "k")] * 2
    with pytest.raises(InvalidRequest) as e:
        parse_generate({"text": "x", "pin_s": "later"})
    assert e.value.param == "pin_s"
    with pytest.raises(InvalidRequest) as e:
        parse_generate({"text": "x", "cache_salt": 3})
    assert e.value.param == "cache_salt"
