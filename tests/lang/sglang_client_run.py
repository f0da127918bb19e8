"""Runs the parity programs through SGLang's own frontend client against a server; prints JSON.

    python -m tests.lang.sglang_client_run http://127.0.0.1:PORT

A separate process because SGLang's HTTP client has no timeouts: the test kills it if it hangs.
SGLang picks a chat template by model path and knows no SmolLM2; the server's template is chatml.
"""

from __future__ import annotations

import json
import sys

import sglang
from sglang.lang.global_config import global_config

from tests.lang.parity_programs import run_all


def main(url: str) -> None:
    backend = sglang.RuntimeEndpoint(url, chat_template_name="chatml")
    results = run_all(sglang, backend)
    # the join posts /concate_and_append_request only on this path (else SGLang appends text itself)
    on_server = global_config.enable_parallel_encoding and backend.support_concate_and_append
    print(
        json.dumps(
            {"sglang_version": sglang.__version__, "concate_and_append_on_server": on_server, "results": results}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
