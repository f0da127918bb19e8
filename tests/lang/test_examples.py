"""Each example in examples/ runs against a real server and reports prefix reuse."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.server_harness import start_server

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# lowest share of prompt tokens each example must get from the cache (greedy runs reuse more)
MIN_REUSE = {"react_agent": 0.8, "json_tool_call": 0.7, "rag_multi_turn": 0.6, "tree_of_thought": 0.5}


@pytest.fixture(scope="module")
def server():
    handle = start_server(dtype="bfloat16")
    yield handle
    handle.shutdown()


@pytest.mark.parametrize("name", sorted(MIN_REUSE))
def test_example_runs_and_reuses_the_cache(server, name):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--url", server.zmq_address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = re.search(r"radix cache: (\d+) of (\d+) prompt tokens reused", done.stdout)
    assert summary, done.stdout[-2000:]
    cached, prompt = map(int, summary.groups())
    assert prompt > 0 and cached / prompt >= MIN_REUSE[name]
