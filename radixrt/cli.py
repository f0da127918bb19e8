"""`radixrt` command line: one subcommand per job, each imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module defines `add_arguments(parser)` and `main(args)`.
COMMANDS = {
    "serve": ("radixrt.runtime.server.launcher", "start the HTTP + ZMQ server"),
    "cluster": (
        "radixrt.cluster.launcher",
        "serve N replicas on Ray Serve behind one ingress (pip install radixrt[cluster])",
    ),
    "import-gguf": ("radixrt.workers.gguf_import", "convert a llama-family GGUF file to an HF folder"),
    "demo": ("radixrt.demo", "run the demo on the embedded model"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radixrt", description="radix-tree prefix-sharing LLM runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == (argv or sys.argv[1:] or [None])[0]:
            modules[name] = importlib.import_module(module)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    return modules[args.command].main(args) or 0
