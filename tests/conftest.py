"""Shared fixtures: the embedded model folder (imported once per machine) and a tiny random
llama that uses the embedded model's tokenizer (fast numerics for scheduler tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import write_tiny_llama


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from radixrt.workers.model_store import resolve_model

    return resolve_model("default")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """2-layer random llama with the embedded model's tokenizer and chat template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_model_dir)


@pytest.fixture(scope="session")
def long_tiny_model_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """The tiny llama with an 8,192-token context: requests that must stay in flight while a test
    checks something run thousands of tokens (1,000 took about a second with the C++ kernels)."""
    return write_tiny_llama(
        tmp_path_factory.mktemp("long-tiny-llama"), embedded_model_dir, max_position_embeddings=8192
    )
