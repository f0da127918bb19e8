"""SGLang programs run unchanged: one set of programs (tests/lang/parity_programs.py) through
radixrt's frontend and through SGLang's own frontend client (`sglang.RuntimeEndpoint`, sglang
0.5.23, which `make setup` installs) against one real `radixrt serve`, greedily: the two leave
the same variables and the same text.

SGLang's client runs in a subprocess under a timeout: its HTTP calls have none, and a request
it cannot complete (a 404 on `/concate_and_append_request` used to be one) leaves it waiting.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import radixrt
from tests.lang.parity_programs import run_all
from tests.runtime.server_harness import http_client, idle, start_server, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SGLANG_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def server():
    handle = start_server()
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def sglang_results(server) -> dict[str, Any]:
    if importlib.util.find_spec("sglang") is None:
        pytest.skip("sglang is not installed; `make setup` installs sglang==0.5.23 with --no-deps for this test")
    command = [sys.executable, "-m", "tests.lang.sglang_client_run", server.url]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SGLANG_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        stderr = (e.stderr or b"").decode(errors="replace")[-3000:]  # bytes, whatever text= says
        pytest.fail(f"SGLang's client did not finish the programs in {SGLANG_TIMEOUT_S}s (killed); stderr:\n{stderr}")
    assert done.returncode == 0, f"SGLang's client failed:\n{done.stderr[-6000:]}"
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["concate_and_append_on_server"], "SGLang's join did not take the path that posts to the server"
    return answer["results"]


@pytest.fixture(scope="module", params=["zmq", "http"])
def radixrt_results(request, server) -> dict[str, Any]:
    backend = radixrt.RuntimeEndpoint(server.zmq_address if request.param == "zmq" else server.url, timeout=120)
    try:
        return run_all(radixrt, backend)
    finally:
        backend.shutdown()


def test_both_frontends_leave_the_same_variables_and_text(radixrt_results, sglang_results):
    assert sorted(radixrt_results) == sorted(sglang_results)
    for name, ours in radixrt_results.items():
        assert ours == sglang_results[name], f"{name}: radixrt {ours!r}\n  SGLang {sglang_results[name]!r}"


def test_the_programs_did_what_they_say(radixrt_results):
    """The comparison is not vacuous: every feature left its mark (checked on radixrt's side,
    which the test above shows equal to SGLang's)."""
    r = {name: result["variables"] for name, result in radixrt_results.items()}
    text = {name: result["text"] for name, result in radixrt_results.items()}
    assert r["chat_and_select"]["fruit"] and r["chat_and_select"]["sky"] in ("yes", "no", "sometimes")
    assert (
        text["chat_and_select"].startswith("<|im_start|>system\n")
        and text["chat_and_select"].count("<|im_start|>") == 5
    )
    typed = r["typed_gens"]  # text, as SGLang stores it; int()/float() parse it
    assert re.fullmatch(r"[-+]?[0-9]+", typed["legs"]) and re.fullmatch(r"[-+]?[0-9]+", typed["year"])
    assert re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+", typed["pi"])
    assert typed["wet"] in ("True", "False") and typed["word"].startswith('"')
    assert len(r["fork_gather"]["idea"]) == 3 and all(isinstance(i, str) for i in r["fork_gather"]["idea"])
    report = text["fork_concate"]
    assert report.index("\nMorning: ") < report.index("\nEvening: ") < report.index("\nSummary: ")
    assert "Let me think: " in r["var_scope"]["reasoning"] and r["var_scope"]["reasoning"] in text["var_scope"]
    story, whole = radixrt_results["stream"]["streamed"]
    assert story == r["stream"]["story"] != "" and whole == text["stream"]
    after = r["set_after_end"]
    assert isinstance(after["n"], int) and after["twice"] == 2 * after["n"] and after["note"] == "set after the end"


def test_the_server_holds_no_request_or_kv_after_both_frontends(server, radixrt_results, sglang_results):
    with http_client(server) as http:
        wait_until(lambda: idle(http))
