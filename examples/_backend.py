"""Shared by the examples: a backend from --url, or a fresh local server on the embedded model."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import radixrt as sgl


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="a running server (tcp://... ZMQ address or http://...); default: start one")
    parser.add_argument("--model", default="default", help="model for the server this example starts")
    return parser.parse_args()


@contextlib.contextmanager
def backend(args: argparse.Namespace) -> Iterator[object]:
    if args.url:
        endpoint = sgl.RuntimeEndpoint(args.url)
        try:
            yield endpoint
        finally:
            endpoint.shutdown()
        return
    print(f"starting radixrt serve --model {args.model} ...", flush=True)
    with sgl.Runtime(model=args.model) as runtime:
        print(f"serving at {runtime.url} (DSL over ZMQ: {runtime.server.zmq_address})\n", flush=True)
        yield runtime


def print_cache_summary(states: list) -> None:
    """Total prompt tokens the programs sent and how many the radix cache already held."""
    reports = [s.cache_report() for s in states]
    prompt = sum(r.prompt_tokens for r in reports)
    cached = sum(r.cached_tokens for r in reports)
    print(
        f"\nradix cache: {cached} of {prompt} prompt tokens reused ({cached / max(prompt, 1):.0%}) "
        f"over {sum(len(r.records) for r in reports)} model calls"
    )
