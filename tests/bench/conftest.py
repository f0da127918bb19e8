"""The bench tests' model and systems: a 2-layer random llama with the embedded tokenizer (8k
context: the workloads' prompts reach ~4k tokens), served by radixrt and by the transformers
baseline in float32."""

from __future__ import annotations

import pytest
import torch

from radixrt.bench.systems import Session
from radixrt.bench.transformers_backend import TransformersBackend
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.server.server_handle import launch_server
from radixrt.runtime.server.tokenizer_manager import load_tokenizer
from tests.tiny_models import write_tiny_llama


@pytest.fixture(scope="session")
def bench_model_dir(tmp_path_factory, embedded_model_dir):
    out = tmp_path_factory.mktemp("bench-llama")
    return write_tiny_llama(out, embedded_model_dir, max_position_embeddings=8192, pad_token_id=2)


@pytest.fixture(scope="session")
def encode(bench_model_dir):
    tokenizer = load_tokenizer(bench_model_dir)
    return lambda text: tokenizer.encode(text, add_special_tokens=True)


def start_radixrt(model_dir, name="radixrt", **flags) -> Session:
    from radixrt.lang import RuntimeEndpoint

    args = ServerArgs(model=str(model_dir), dtype="float32", device="cpu", port=0, kv_slots=65536,
                      max_running_requests=32, log_level="warning", **flags)  # fmt: skip
    handle = launch_server(args, timeout=300)
    return Session(name, RuntimeEndpoint(handle.zmq_address, timeout=300), handle.shutdown)


@pytest.fixture(scope="session")
def radixrt_session(bench_model_dir):
    session = start_radixrt(bench_model_dir)
    yield session
    session.close()


@pytest.fixture(scope="session")
def hf_session(bench_model_dir):
    session = Session("transformers", TransformersBackend(bench_model_dir, dtype=torch.float32, max_batch=32))
    yield session
    session.close()
