"""`radixrt demo`: chat questions sharing one system prompt on the embedded model, in-process."""

from __future__ import annotations

import argparse
import logging
import time

SYSTEM = (
    "You are a concise geography tutor. Answer in one short sentence. "
    "Always name the country and the city you are asked about."
)
QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Japan?",
    "What is the capital of Italy?",
    "What is the capital of Canada?",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model folder or 'default'")
    parser.add_argument("--max-new-tokens", type=int, default=32)


def main(args: argparse.Namespace) -> int:
    from radixrt.runtime.engine import Engine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"loading {args.model} ...", flush=True)
    with Engine(model=args.model) as engine:
        tok = engine.tm.tokenizer
        prompts = [
            tok.apply_chat_template(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for q in QUESTIONS
        ]
        params = {"temperature": 0, "max_new_tokens": args.max_new_tokens}
        start = time.perf_counter()
        first = engine.generate(prompts[0], params)  # warms the cache with the system prompt
        rest = engine.generate(prompts[1:], params)
        elapsed = time.perf_counter() - start
        for q, out in zip(QUESTIONS, [first, *rest]):
            meta = out["meta_info"]
            print(f"\nQ: {q}\nA: {out['text'].strip()}")
            print(f"   prompt {meta['prompt_tokens']} tokens, {meta['cached_tokens']} from the radix cache")
        stats = engine.stats()
        print(
            f"\n{len(QUESTIONS)} requests in {elapsed:.2f}s; cache hit {stats['cache_hit_tokens']}"
            f" of {stats['prompt_tokens']} prompt tokens"
        )
    return 0
