"""Load a model onto a device and run forward batches over a KV pool the runtime owns.

The runner never builds the pool itself (workers import no radix_cache code); it tells the
runtime the pool's shape (`kv_shape`, `bytes_per_slot`, `suggest_num_slots`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from radixrt import envs
from radixrt.workers.decode_graphs import CudaGraph, DecodeGraphs
from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.gguf_weights import serve_gguf_tensors
from radixrt.workers.layers import cpu_kernels
from radixrt.workers.layers.attention import KVBuffers, create_backend
from radixrt.workers.layers.cpu_kernels import cpu_flags, elementwise_implementations
from radixrt.workers.layers.cpu_linear import LinearPlan
from radixrt.workers.layers.fused_decode import FusedDecodeLayers
from radixrt.workers.layers.module_calls import pin_children
from radixrt.workers.layers.quantization import QUANTIZATIONS
from radixrt.workers.malloc import keep_freed_blocks
from radixrt.workers.model_config import ModelConfig
from radixrt.workers.models.llama import LlamaForCausalLM
from radixrt.workers.weights import init_dummy_weights, load_safetensors, weights_fingerprint

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LOAD_FORMATS = ("auto", "dummy")
CPU_DEFAULT_SLOTS = 65536


class ModelRunner:
    """A loaded llama-family model plus its attention backend."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "auto",
        device: str = "auto",
        load_format: str = "auto",
        attention_backend: str = "auto",
        quantization: str = "none",
        fingerprint_weights: bool = False,
    ):
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"unknown load_format {load_format!r}; choose from {LOAD_FORMATS}")
        self.model_path = Path(model_path)
        self.model_config = ModelConfig.from_dir(self.model_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.device.type == "cpu":
            use_all_cores()
            keep_freed_blocks()
        self.model = build_model(self.model_config, self.dtype, self.device)
        if load_format == "dummy":
            init_dummy_weights(self.model)
        else:
            load_safetensors(self.model, self.model_path)
        # as loaded, before fusing or repacking (kernel choices must not change the key of saved KV)
        self.weights_fingerprint = weights_fingerprint(self.model) if fingerprint_weights else None
        self.model.fuse_projections()
        self.linears = LinearPlan()  # no choices: torch's own F.linear
        self.quantization = quantization
        linear_summary = None
        if quantization == "int8":
            linear_summary = f"int8 ({self.model.quantize_int8(self.device)})"
        elif quantization == "gguf":
            linear_summary = serve_gguf_tensors(self.model, self.model_path, self.device)
        elif (
            self.device.type == "cpu"
            and self.dtype in (torch.bfloat16, torch.float32)
            and not envs.torch_reference_only()
        ):
            weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            # the candidates chosen per M each hold the weights in their own layout
            one_layout = 3 * weight_bytes > _available_ram() // 2
            self.linears = self.model.use_cpu_linears(one_layout)
        pin_children(self.model)  # the model's structure is final
        cfg = self.model_config
        self.backend = create_backend(
            attention_backend,
            self.device,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            dtype=self.dtype,
        )
        # NOTE: on CPU this loads (or compiles) the C++ kernels, so a failure is logged at start-up
        self.kernels = {
            **self.backend.implementations(),
            **elementwise_implementations(self.device, self.dtype),
            "linear": linear_summary or self.linears.summary(),
        }
        # decode_layers runs the C++ row-wise ops: where they run (CPU, bf16 / float32, kernels built)
        ops = cpu_kernels.load() if self.kernels["rms_norm"] == "cpu_kernels" else None
        if ops is not None:
            self.model.fused_decode = FusedDecodeLayers(self.model.model.layers, ops)
        self.kernels["decode_layer"] = "cpu_kernels" if ops is not None else "off"
        self.graphs: DecodeGraphs | None = None  # capture_decode_graphs

    def kv_shape(self) -> tuple[int, int, int]:
        """(num_layers, n_kv_heads, head_dim) of the KV pool this model needs."""
        cfg = self.model_config
        return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim

    def bytes_per_slot(self) -> int:
        """Bytes of K and V, over all layers, for one token."""
        layers, heads, dim = self.kv_shape()
        return 2 * layers * heads * dim * torch.empty(0, dtype=self.dtype).element_size()

    def suggest_num_slots(self, mem_fraction: float = 0.8) -> int:
        """Usable KV slots (tokens; the pool's padding slot not counted) for `mem_fraction`
        of the free memory. CUDA: free device memory once the weights are loaded. CPU:
        enough for 64k tokens, bounded by the available RAM.
        """
        if not 0 < mem_fraction <= 1:
            raise ValueError(f"mem_fraction must be in (0, 1], got {mem_fraction}")
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(1, int(free * mem_fraction) // self.bytes_per_slot() - 1)
        fit = int(_available_ram() * mem_fraction) // self.bytes_per_slot()
        return max(1, min(CPU_DEFAULT_SLOTS, fit))

    def graphs_supported(self) -> str | None:
        """Why decode steps cannot replay CUDA graphs here, or None where they can."""
        if self.device.type != "cuda":
            return "not a CUDA device"
        if self.backend.implementations()["decode_attention"] != "flashinfer":
            return "the torch attention backend plans on the host inside the forward"
        return None

    @torch.inference_mode()
    def capture_decode_graphs(self, kv_pool: KVBuffers, max_batch: int, max_kv_tokens: int,
                              new_graph=CudaGraph) -> None:  # fmt: skip
        """Capture one decode graph per batch-size bucket up to `max_batch` over `kv_pool`
        (workers/decode_graphs.py); later decode batches that fit replay them."""
        graphs = DecodeGraphs(self.model, self.backend, kv_pool, max_batch, max_kv_tokens, self.device)
        graphs.capture(new_graph)
        self.graphs = graphs
        self.kernels["decode_graphs"] = f"batch sizes {graphs.buckets[0]}-{graphs.buckets[-1]}"

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv_pool: KVBuffers) -> torch.Tensor:
        """Logits `[len(batch.logits_indices), vocab]` float32; writes the batch's K/V to the pool."""
        self.linears.switch.on = batch.invariant
        if self.graphs is not None and self.graphs.kv_pool is kv_pool and self.graphs.fits(batch):
            return self.graphs.run(batch)
        return self.model(batch, kv_pool, self.backend)


def build_model(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    """The model with uninitialised parameters on `device` (no time spent on a random init)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config, dtype)
    model.to_empty(device=device)
    return model.requires_grad_(False).eval()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use auto, cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto": bfloat16 on CUDA and on CPUs where it is fast (`cpu_has_fast_bf16`), else float32."""
    if dtype == "auto":
        fast_bf16 = device.type == "cuda" or cpu_has_fast_bf16()
        return torch.bfloat16 if fast_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 in /proc/cpuinfo, or AVX2 with our kernels built, which widen bf16 to
    float32 in registers: measured on an AVX2-only AMD EPYC, the embedded model decoded 85 tokens/s
    at batch 1 in bf16 against 47 in float32, and was as fast or faster at every other figure
    (BENCHMARKS.md, "An AVX2-only CPU"). Linux; False elsewhere."""
    flags = cpu_flags()
    return bool(flags & {"amx_bf16", "avx512_bf16"}) or ("avx2" in flags and cpu_kernels.load() is not None)


def use_all_cores() -> None:
    """torch intra-op threads = the cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and torch.get_num_threads() != cores:
        torch.set_num_threads(cores)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3
