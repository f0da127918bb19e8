"""Benchmarks: SGLang's agentic benchmark programs as DSL workloads on radixrt, radixrt without its
radix cache, transformers' `generate` and llama.cpp (llama-cpp-python) on the same weights, with
many programs in flight and one at a time, outputs cross-checked; plus engine micro-benchmarks.

Run `python -m radixrt.bench --help`; results and the exact commands are in BENCHMARKS.md.
"""
