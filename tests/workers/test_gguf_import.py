"""GGUF import: the embedded model against transformers' own GGUF loader, tiny GGUFs written here
from random HF models (llama with its rope reorder, qwen2 with biases), the model store and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

from radixrt.workers.gguf_import import import_gguf, read_metadata, unpermute_rope
from radixrt.workers.gguf_tokenizer import build_tokenizer
from radixrt.workers.model_store import OUTPUT_FILES, embedded_gguf, resolve_model

TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "numbers 1 23 456 7890 x1y2 3.14159 -42",
    "naïve café — 日本語のテキスト, Ελληνικά, русский",
    "emoji 🙂👍🏽🇫🇷 and zero\u200bwidth",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindented\r\nwindows",
    "   many   spaces\t\ttabs\n\n",
    "I'm sure they'll say we've done it, isn't it?",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<file_sep>code",
    "",
]
CHATS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another, 🙂?"},
    ],
]
PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "<|im_start|>user\nHi 👋<|im_end|>\n"]


@pytest.fixture(scope="session")
def gguf_file() -> Path:
    try:
        return embedded_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def embedded_folder(gguf_file: Path) -> Path:
    """The embedded model imported once into the real cache ($RADIXRT_CACHE), shared with other tests."""
    return resolve_model("default")


@pytest.fixture(scope="module")
def reference_tokenizer(gguf_file: Path):
    return AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)


@pytest.fixture(scope="module")
def tokenizers_under_test(embedded_folder: Path):
    return AutoTokenizer.from_pretrained(embedded_folder), Tokenizer.from_file(str(embedded_folder / "tokenizer.json"))


def test_embedded_import_gives_same_logits_as_transformers_gguf_loader(gguf_file, embedded_folder, reference_tokenizer):
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    reference = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(embedded_folder, dtype=torch.float32)
    for prompt in PROMPTS:
        ids = reference_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected, actual = reference(ids).logits, ours(ids).logits  # [1, tokens, vocab]
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5)
    assert ours.config.tie_word_embeddings and reference.config.tie_word_embeddings


def test_embedded_config_matches_gguf_metadata(embedded_folder):
    config = json.loads((embedded_folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (30, 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert (config["vocab_size"], config["max_position_embeddings"], config["rope_theta"]) == (49152, 8192, 1e5)
    assert config["tie_word_embeddings"] is True
    generation = json.loads((embedded_folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 == config["eos_token_id"]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_json_encodes_and_decodes_like_gguf_tokenizer(text, reference_tokenizer, tokenizers_under_test):
    hf, raw = tokenizers_under_test
    expected = reference_tokenizer(text)["input_ids"]
    assert hf(text)["input_ids"] == expected
    assert raw.encode(text).ids == expected
    assert (
        hf.decode(expected) == reference_tokenizer.decode(expected) == raw.decode(expected, skip_special_tokens=False)
    )
    assert hf.decode(expected) == text  # byte-level BPE is lossless
    assert hf.decode(expected, skip_special_tokens=True) == reference_tokenizer.decode(
        expected, skip_special_tokens=True
    )


def test_special_tokens_stay_whole(tokenizers_under_test):
    hf, raw = tokenizers_under_test
    assert raw.encode("<|im_start|><|im_end|><|endoftext|>").ids == [1, 2, 0]
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.eos_token_id) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        2,
    )
    assert hf.decode([1, 4093, 2], skip_special_tokens=True) == "user"


@pytest.mark.parametrize("messages", CHATS)
def test_chat_template_renders_like_gguf_tokenizer(messages, reference_tokenizer, tokenizers_under_test):
    hf, _ = tokenizers_under_test
    for generation_prompt in (False, True):
        kwargs = {"add_generation_prompt": generation_prompt}
        text = hf.apply_chat_template(messages, tokenize=False, **kwargs)
        assert text == reference_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        assert text.startswith("<|im_start|>system\n")
        ids = hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
        assert ids == reference_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)


def test_unpermute_rope_inverts_llama_cpp_order():
    heads, head_dim, cols = 3, 8, 5
    hf = torch.randn(heads * head_dim, cols)
    assert torch.equal(unpermute_rope(llama_cpp_permute(hf, heads), heads), hf)
    assert not torch.equal(llama_cpp_permute(hf, heads), hf)


# --- tiny GGUFs written from random HF models ---------------------------------------------------


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to q/k rows: interleave the two rope halves of each head."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip


def gguf_tensors(model, arch: str) -> dict[str, np.ndarray]:
    config, out = model.config, {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, layer, *module, kind = name.split(".")
            gguf_name = f"blk.{layer}.{_GGUF_NAMES['.'.join(module)]}.{kind}"
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                         "lm_head.weight": "output.weight"}[name]  # fmt: skip
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            value = llama_cpp_permute(value, heads)
        out[gguf_name] = value.numpy()
    return out


def write_gguf(path: Path, model, arch: str, tokenizer_meta: dict, pre: str, types: dict | None = None) -> Path:
    """`model` as a GGUF file; `types` maps GGUF tensor names to the quantized types to store them in
    (float32 otherwise)."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokenizer_meta["tokenizer.ggml.tokens"])
    writer.add_token_types(tokenizer_meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(tokenizer_meta["tokenizer.ggml.merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(tokenizer_meta["tokenizer.chat_template"])
    for name, value in gguf_tensors(model, arch).items():
        if name in (types or {}):
            data = gguf.quants.quantize(value, types[name])
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=types[name])
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_model(arch: str):
    shape = {
        "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rope_theta": 10000.0,
    }  # fmt: skip
    # A large init range makes attention scores big enough that a wrong q/k row order shows in the logits.
    if arch == "llama":
        config = LlamaConfig(**shape, tie_word_embeddings=False, initializer_range=0.3)
    else:
        config = Qwen2Config(**shape, tie_word_embeddings=True, initializer_range=0.3)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def tokenizer_meta(gguf_file: Path) -> dict:
    return read_metadata(gguf.GGUFReader(gguf_file))


@pytest.mark.parametrize(("arch", "pre"), [("llama", "llama-bpe"), ("qwen2", "qwen2")])
def test_tiny_gguf_round_trips_to_the_same_model_and_tokenizer(arch, pre, tokenizer_meta, tmp_path):
    model = tiny_model(arch)
    path = write_gguf(tmp_path / f"tiny-{arch}.gguf", model, arch, tokenizer_meta, pre)
    folder = import_gguf(path, tmp_path / "out", progress=False)
    imported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 28, 17, 905, 2, 42, 9001]])
    with torch.no_grad():
        torch.testing.assert_close(imported(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert imported.config.tie_word_embeddings == model.config.tie_word_embeddings
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode(text).ids == reference(text)["input_ids"], text


def test_add_bos_flag_makes_the_tokenizer_prepend_bos(tokenizer_meta):
    meta = {**tokenizer_meta, "tokenizer.ggml.add_bos_token": True}
    assert build_tokenizer(meta).encode("hi there").ids == [1, 6004, 665]
    assert build_tokenizer(tokenizer_meta).encode("hi there").ids == [6004, 665]


def test_unsupported_tokenizers_are_refused_by_name(tokenizer_meta):
    with pytest.raises(ValueError, match="pre-tokenizer 'mystery'"):
        build_tokenizer({**tokenizer_meta, "tokenizer.ggml.pre": "mystery"})
    with pytest.raises(ValueError, match="tokenizer 'llama' is not supported"):
        build_tokenizer({**tokenizer_meta, "tokenizer.ggml.model": "llama"})


# --- model store ---------------------------------------------------------------------------------


def test_resolve_default_reuses_the_cached_import(embedded_folder):
    before = {name: (embedded_folder / name).stat() for name in OUTPUT_FILES}
    assert resolve_model("default") == embedded_folder == resolve_model("SmolLM2-135M-Instruct")
    after = {name: (embedded_folder / name).stat() for name in OUTPUT_FILES}
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in after.items()} == {
        n: (s.st_ino, s.st_mtime_ns) for n, s in before.items()
    }


def test_resolve_default_reimports_an_incomplete_folder(embedded_folder, tmp_path):
    folder = tmp_path / "models" / embedded_folder.name
    folder.mkdir(parents=True)
    for name in OUTPUT_FILES:
        if name != "tokenizer.json":
            _link_or_copy(embedded_folder / name, folder / name)
    assert resolve_model("default", cache_dir=tmp_path) == folder
    assert all((folder / name).is_file() for name in OUTPUT_FILES)
    assert (folder / "tokenizer.json").read_bytes() == (embedded_folder / "tokenizer.json").read_bytes()
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]  # no leftovers


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def test_resolve_existing_folder_returns_it(embedded_folder):
    assert resolve_model(str(embedded_folder)) == embedded_folder


def test_resolve_unknown_name_says_nothing_is_downloaded():
    with pytest.raises(FileNotFoundError, match="never downloads from a hub.*'default'"):
        resolve_model("meta-llama/Llama-3.2-1B-Instruct")


def test_resolve_folder_without_config_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        resolve_model(str(tmp_path))


def test_resolve_gguf_file_points_to_the_import_command(gguf_file):
    with pytest.raises(ValueError, match="import-gguf"):
        resolve_model(str(gguf_file))


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_import_gguf_writes_a_loadable_folder(tokenizer_meta, tmp_path):
    model = tiny_model("llama")
    path = write_gguf(tmp_path / "tiny.gguf", model, "llama", tokenizer_meta, "smollm")
    out = tmp_path / "folder"
    command = [sys.executable, "-m", "radixrt", "import-gguf", str(path), str(out), "--no-progress"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    again = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "already exists" in again.stderr
