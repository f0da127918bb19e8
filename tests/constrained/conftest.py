"""Fixtures: the embedded model's tokenizer and one grammar compiler shared by the package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from radixrt.constrained import GrammarCompiler
from tests.constrained.helpers import EOS_IDS, MODEL_VOCAB


@pytest.fixture(scope="session")
def model_dir(embedded_model_dir) -> Path:
    return embedded_model_dir


@pytest.fixture(scope="session")
def tokenizer(model_dir) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def compiler(model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("grammar-cache")
    with GrammarCompiler(model_dir, eos_token_ids=EOS_IDS, vocab_size=MODEL_VOCAB, cache_dir=cache) as compiler:
        yield compiler
