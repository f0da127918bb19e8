"""The llama family: Llama 2/3, SmolLM2, Mistral, Qwen2 (q/k/v bias), over a paged KV pool.

Parameter names are the HF checkpoint names, so loading is a dict lookup. After loading,
`fuse_projections()` concatenates q/k/v and gate/up into one matmul each (fewer, larger
matmuls; on CPU decode the per-op overhead matters as much as the FLOPs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixrt.workers.forward_batch import ForwardBatch
from radixrt.workers.layers import cpu_kernels, cpu_linear, quantization
from radixrt.workers.layers.attention.base import AttentionBackend, KVBuffers
from radixrt.workers.layers.fused_decode import FusedDecodeLayers
from radixrt.workers.layers.module_calls import DirectCall
from radixrt.workers.layers.norm import RMSNorm
from radixrt.workers.layers.rotary import RotaryEmbedding
from radixrt.workers.model_config import ModelConfig


def fuse_linears(*linears: nn.Linear) -> nn.Linear:
    """One Linear whose output is the concatenation of the given Linears' outputs."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    has_bias = linears[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        bias = torch.cat([lin.bias.detach() for lin in linears])
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


class LlamaAttention(DirectCall, nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        hidden, bias = config.hidden_size, config.attention_bias
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(hidden, config.q_size, bias=bias, dtype=dtype)
        self.k_proj = nn.Linear(hidden, config.kv_size, bias=bias, dtype=dtype)
        self.v_proj = nn.Linear(hidden, config.kv_size, bias=bias, dtype=dtype)
        # NOTE: Qwen2 biases q/k/v only; Llama's `attention_bias` covers o_proj too.
        o_bias = bias and config.architecture != "Qwen2ForCausalLM"
        self.o_proj = nn.Linear(config.q_size, hidden, bias=o_bias, dtype=dtype)
        self.qkv_proj: nn.Linear | None = None

    def fuse_projections(self) -> None:
        self.qkv_proj = fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer_id: int,
        kv_pool: KVBuffers,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(x.shape[0], heads + 2 * kv_heads, self.head_dim)  # [T, H + 2 Hkv, D]
        RotaryEmbedding.apply_(qkv[:, : heads + kv_heads], cos, sin)
        q, k, v = qkv.split((heads, kv_heads, kv_heads), dim=1)
        out = backend.attend(q, k, v, layer_id, kv_pool)  # [T, H * D]
        return self.o_proj(out)


class LlamaMLP(DirectCall, nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        hidden, inter = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(inter, hidden, bias=False, dtype=dtype)
        self.gate_up_proj: nn.Linear | None = None
        self.intermediate_size = inter

    def fuse_projections(self) -> None:
        self.gate_up_proj = fuse_linears(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * intermediate]
        ops = cpu_kernels.elementwise_ops(gate_up)
        if ops is not None and gate_up.is_contiguous():
            return self.down_proj(ops.silu_and_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))


class LlamaDecoderLayer(DirectCall, nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.self_attn = LlamaAttention(config, dtype)
        self.mlp = LlamaMLP(config, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer_id: int,
        kv_pool: KVBuffers,
        backend: AttentionBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, residual stream before adding it)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, layer_id, kv_pool, backend)
        hidden = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        # a given weight skips the random init, whose normal_ on the meta device (build_model) would
        # import torch._dynamo: ~3 s of every start
        weight = torch.empty(config.vocab_size, config.hidden_size, dtype=dtype)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, dtype) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class LlamaForCausalLM(nn.Module):
    """Decoder over a paged KV pool; `forward` returns logits only for the requested rows."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, dtype)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self._head_module = False  # the LM head is a module of its own (tied or not)
        self.fused_decode: FusedDecodeLayers | None = None  # one C++ op for all layers at decode (the runner sets it)

    def fuse_projections(self) -> None:
        """Fuse q/k/v and gate/up after the HF-named weights are loaded (once)."""
        for layer in self.model.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def use_cpu_linears(self, one_layout: bool) -> cpu_linear.LinearPlan:
        """Every linear, the LM head included, on the implementations measured fastest on this CPU
        (layers/cpu_linear.py); a tied head reads the embedding's weight."""
        self.untie_head()
        return cpu_linear.install(self, self.model.embed_tokens.weight.dtype, one_layout)

    def quantize_int8(self, device: torch.device) -> str:
        """Every linear, the LM head included, as weight-only int8 (layers/quantization.py); the
        embedding stays in the model's dtype. Returns what runs them."""
        self.untie_head()
        return quantization.quantize_linears(self, device)

    def untie_head(self) -> None:
        """The LM head as a Linear module; a tied one reads the embedding's weight (no copy)."""
        if self.config.tie_word_embeddings:
            head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False, device="meta")
            head.weight = self.model.embed_tokens.weight
            self.lm_head = head
        self._head_module = True

    @property
    def lm_head_weight(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, batch: ForwardBatch, kv_pool: KVBuffers, backend: AttentionBackend) -> torch.Tensor:
        """Logits `[R, vocab]` float32 for `batch.logits_indices`; writes the batch's K/V."""
        self.prepare(batch, backend)
        return self.run_layers(batch, kv_pool, backend)

    def prepare(self, batch: ForwardBatch, backend: AttentionBackend) -> None:
        """The host work of a forward: checks, and the backend's plan. A replayed CUDA graph
        (workers/decode_graphs.py) runs this before each replay and `run_layers` only in its capture."""
        if max(batch.seq_lens) > self.rotary.max_positions:
            raise ValueError(
                f"sequence of {max(batch.seq_lens)} tokens exceeds the model's "
                f"max_position_embeddings {self.rotary.max_positions}"
            )
        backend.prepare(batch)

    def run_layers(self, batch: ForwardBatch, kv_pool: KVBuffers, backend: AttentionBackend) -> torch.Tensor:
        """After `prepare`: the forward's device work, from the embedding to the logits."""
        hidden = self.model.embed_tokens(batch.input_ids)  # [T, hidden]
        cos, sin = self.rotary.lookup(batch.positions, hidden.dtype)
        fused = None
        if self.fused_decode is not None:
            args = backend.decode_kernel_args()
            fused = self.fused_decode.run(batch.num_tokens, batch.invariant, hidden, cos, sin, kv_pool, args)
        if fused is not None:
            hidden, residual = fused
        else:
            residual = None
            for layer_id, layer in enumerate(self.model.layers):
                hidden, residual = layer(hidden, residual, cos, sin, layer_id, kv_pool, backend)
        rows = batch.logits_indices
        hidden = self.model.norm.add_and_norm(hidden[rows], residual[rows])  # [R, hidden]
        if self._head_module:
            return self.lm_head(hidden).float()
        return F.linear(hidden, self.lm_head_weight).float()
