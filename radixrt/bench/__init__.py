"""Benchmarks: agentic DSL workloads on radixrt, radixrt without its radix cache, and
transformers' `generate` on the same weights; plus engine micro-benchmarks.

Run `python -m radixrt.bench --help`; results and the exact commands are in BENCHMARKS.md.
"""
