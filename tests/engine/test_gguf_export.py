"""GGUF export, read back with gguf.GGUFReader and run with llama.cpp's conventions in numpy.

CI has no llama.cpp, so the file itself is checked: its keys, its vocabulary against tokenizer.json,
its tensors against the checkpoint, and a forward pass that does what llama.cpp does with them
(shapes stored reversed, adjacent-pair rotary on the permuted Q/K rows).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.chat.session import load_model
from engine.checkpoints.checkpoint import Checkpoint, model_tensors, read_checkpoint
from engine.checkpoints.gguf_export import GGUF_DTYPES, export_gguf, storage_type
from engine.checkpoints.gguf_vocab import GPT2_SPLIT_REGEX
from engine.checkpoints.hf_export import export_hf
from engine.checkpoints.lookup import resolve_checkpoint
from engine.config import ModelConfig
from engine.data.tokenizer import load_tokenizer
from engine.errors import ExportError

F32, F16, BF16, Q8_0 = (gguf.GGMLQuantizationType[n] for n in ("F32", "F16", "BF16", "Q8_0"))


@pytest.fixture(scope="module")
def ckpt(trained_run: Path) -> Checkpoint:
    return resolve_checkpoint(str(trained_run))


@pytest.fixture(scope="module")
def exports(ckpt: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {dtype: export_gguf(ckpt, root / dtype, dtype) for dtype in GGUF_DTYPES}


@pytest.fixture(scope="module")
def wide_export(ckpt: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose vocab_size exceeds its tokenizer's (as the tiny preset's 1536 vs ~1340 ids), exported."""
    from engine.checkpoints.checkpoint import save_checkpoint
    from engine.model.transformer import CausalLM

    root = tmp_path_factory.mktemp("wide")
    config = ModelConfig(**{**ckpt.state["model"], "vocab_size": ckpt.model_config.vocab_size + 40})
    saved = save_checkpoint(root / "ckpt", model_state=model_tensors(CausalLM(config)), optimizer_state=None, keep=1,
                            tokenizer_dir=ckpt.tokenizer_dir,
                            state={"stage": "sft", "step": 0, "model": config.model_dump(mode="json")})
    return export_gguf(read_checkpoint(saved), root / "gguf", "f32")


def field(reader: gguf.GGUFReader, key: str) -> object:
    found = reader.get_field(key)
    assert found is not None, f"missing key {key}"
    return found.contents()


def weights(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor as float64 in numpy layout. GGUF lists dimensions fastest-first (ggml's ne), the
    reverse of numpy's row-major shape: a (out, in) matrix is stored as ne = [in, out]."""
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = values.reshape(tuple(reversed(t.shape.tolist()))).astype(np.float64)
    return out


def unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Back from llama.cpp's adjacent-pair rows to Hugging Face's half-split rows (written independently
    of the exporter: row 2i of a head came from row i, row 2i+1 from row i + head_dim/2)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    out = np.empty_like(weight)
    for h in range(n_heads):
        block = weight[h * head_dim:(h + 1) * head_dim]
        out[h * head_dim:h * head_dim + head_dim // 2] = block[0::2]
        out[h * head_dim + head_dim // 2:(h + 1) * head_dim] = block[1::2]
    return out


def gguf_forward(reader: gguf.GGUFReader, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) computed the way llama.cpp's llama graph does, from the file alone."""
    w = weights(reader)
    n_head, n_kv = field(reader, "llama.attention.head_count"), field(reader, "llama.attention.head_count_kv")
    hd, eps = field(reader, "llama.attention.key_length"), field(reader, "llama.attention.layer_norm_rms_epsilon")
    base, T = field(reader, "llama.rope.freq_base"), len(ids)
    angles = np.arange(T)[:, None] * base ** (-np.arange(0, hd, 2) / hd)[None]  # (T, hd/2)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]  # (T, 1, hd/2)

    def rope(v: np.ndarray) -> np.ndarray:  # (T, heads, hd): "normal" mode rotates pairs (2i, 2i+1)
        even, odd = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
        return out

    def norm(v: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * weight

    x = w["token_embd.weight"][ids]  # (T, C)
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(field(reader, "llama.block_count")):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(T, n_head, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(T, n_kv, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        k, v = (np.repeat(a, n_head // n_kv, axis=1) for a in (k, v))  # query head j reads kv head j // group
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", probs, v).reshape(T, n_head * hd) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    output = w.get("output.weight", w["token_embd.weight"])  # tied: llama.cpp reuses the embedding
    return norm(x, w["output_norm.weight"]) @ output.T


def engine_logits(ckpt: Checkpoint, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return load_model(ckpt)(torch.tensor([ids])).logits[0].double().numpy()


def prompt_ids(ckpt: Checkpoint) -> list[int]:
    tok = load_tokenizer(ckpt.tokenizer_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "3 plus 4?"}], tokenize=False, add_generation_prompt=True)
    return tok.encode(text + "the cat sat on a red mat", add_special_tokens=False)


def test_metadata_describes_the_model_tokenizer_and_sampling(ckpt: Checkpoint, exports: dict[str, Path]) -> None:
    """Guards against a missing or wrong key: llama.cpp refuses a file without a shape key, and a wrong
    pre-tokenizer, special id or template loads fine and then tokenizes or chats wrongly."""
    c = ckpt.model_config
    tok = load_tokenizer(ckpt.tokenizer_dir)
    reader = gguf.GGUFReader(exports["f32"])
    expected = {
        "general.architecture": "llama", "general.name": f"{ckpt.state['preset']['name']}-sft",
        "general.file_type": int(gguf.LlamaFileType.ALL_F32), "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "llama.vocab_size": c.vocab_size, "llama.context_length": c.max_position_embeddings,
        "llama.embedding_length": c.hidden_size, "llama.block_count": c.num_hidden_layers,
        "llama.feed_forward_length": c.intermediate_size, "llama.attention.head_count": c.num_attention_heads,
        "llama.attention.head_count_kv": c.num_key_value_heads, "llama.attention.key_length": c.head_dim,
        "llama.attention.value_length": c.head_dim, "llama.rope.dimension_count": c.head_dim,
        "llama.rope.freq_base": pytest.approx(c.rope_theta), "llama.attention.layer_norm_rms_epsilon": pytest.approx(c.rms_norm_eps),
        "general.sampling.temp": pytest.approx(0.8), "general.sampling.top_p": pytest.approx(0.9),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.pretokenizer": GPT2_SPLIT_REGEX,
        "tokenizer.ggml.bos_token_id": tok.bos_token_id, "tokenizer.ggml.eos_token_id": tok.eos_token_id,
        "tokenizer.ggml.unknown_token_id": tok.unk_token_id, "tokenizer.ggml.padding_token_id": tok.pad_token_id,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": tok.chat_template,
    }
    assert {key: field(reader, key) for key in expected} == expected
    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    for dtype, file_type in file_types.items():
        assert field(gguf.GGUFReader(exports[dtype]), "general.file_type") == int(file_type)


def test_tokens_and_merges_equal_tokenizer_json(ckpt: Checkpoint, wide_export: Path) -> None:
    """Guards against ids shifting (llama.cpp would emit other tokens), special tokens typed NORMAL (they
    would be split as text), and a vocabulary shorter than the model's embedding (llama.cpp refuses it)."""
    spec = json.loads((ckpt.tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    reader = gguf.GGUFReader(wide_export)
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    vocab_size, used = field(reader, "llama.vocab_size"), len(spec["model"]["vocab"])
    assert len(tokens) == len(types) == vocab_size == used + 40
    control = {added["id"] for added in spec["added_tokens"] if added["special"]}
    assert control == {0, 1, 2}
    for piece, index in spec["model"]["vocab"].items():
        kind = gguf.TokenType.CONTROL if index in control else gguf.TokenType.NORMAL
        assert (tokens[index], types[index]) == (piece, kind)
    assert tokens[used:] == [f"[PAD{i}]" for i in range(used, vocab_size)]
    assert set(types[used:]) == {gguf.TokenType.UNUSED}
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(pair) for pair in spec["model"]["merges"]]


@pytest.mark.parametrize("dtype", GGUF_DTYPES)
def test_tensors_round_trip_to_the_checkpoint(ckpt: Checkpoint, exports: dict[str, Path], dtype: str) -> None:
    """Guards against a tensor lost, misnamed, transposed, stored in the wrong type, or changed by more
    than its dtype allows; and against a tied output written twice."""
    c = ckpt.model_config
    reader = gguf.GGUFReader(exports[dtype])
    stored = weights(reader)
    source = {k: v.double().numpy() for k, v in load_file(str(ckpt.path / "model.safetensors")).items()}
    assert "output.weight" not in stored and c.tie_word_embeddings
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    assert sorted(stored) == sorted(names.get_name(k, try_suffixes=(".weight",)) for k in source)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    matrix_kind = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0}[dtype]
    for hf_name, expected in source.items():
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        got = stored[name]
        if hf_name.endswith("q_proj.weight"):
            got = unpermute(got, c.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            got = unpermute(got, c.num_key_value_heads)
        assert kinds[name] == (F32 if expected.ndim == 1 else matrix_kind), name
        if expected.ndim == 1 or dtype == "f32":
            assert np.array_equal(got, expected), name
        elif dtype in ("f16", "bf16"):
            rounded = torch.from_numpy(expected).to({"f16": torch.float16, "bf16": torch.bfloat16}[dtype]).double()
            assert np.array_equal(got, rounded.numpy()), name  # round-to-nearest, as torch casts
        else:
            # q8_0: each block of 32 shares a scale d = max|x| / 127, stored as f16 (relative error 2^-11),
            # times an int8 up to 127: error <= d / 2 + 127 * d * 2^-11.
            blocks = expected.reshape(-1, 32)
            bound = np.abs(blocks).max(axis=1, keepdims=True) / 127 * (0.5 + 127 * 2.0**-11) + 1e-9
            assert (np.abs(got.reshape(-1, 32) - blocks) <= bound).all(), name


def assert_forward_matches_engine(path: Path, ckpt: Checkpoint) -> None:
    """The file's logits under llama.cpp's math equal the engine's within 1e-4, same argmax everywhere."""
    ids = prompt_ids(ckpt)
    expected = engine_logits(ckpt, ids)
    got = gguf_forward(gguf.GGUFReader(path), ids)
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_numpy_forward_over_the_file_matches_the_engine(ckpt: Checkpoint, exports: dict[str, Path]) -> None:
    """Guards against the rotary permutation, head grouping, tied output or any layout detail being
    wrong for llama.cpp: its math on the f32 file must give the engine's logits."""
    assert_forward_matches_engine(exports["f32"], ckpt)
    ids = prompt_ids(ckpt)
    q8 = gguf_forward(gguf.GGUFReader(exports["q8_0"]), ids)
    assert np.abs(q8 - engine_logits(ckpt, ids)).max() < 0.1  # quantized: close, not equal


def test_forward_check_fails_on_a_file_without_the_qk_permutation(ckpt: Checkpoint, tmp_path: Path) -> None:
    """Guards against a forward check that passes whatever the exporter does: Hugging Face's Q/K row
    order under llama.cpp's rotary must fail it."""
    unpermuted = export_gguf(ckpt, tmp_path, "f32", _permute_qk=False)
    with pytest.raises(AssertionError):
        assert_forward_matches_engine(unpermuted, ckpt)


def test_export_from_a_bf16_hugging_face_directory(ckpt: Checkpoint, exports: dict[str, Path], tmp_path: Path) -> None:
    """Guards against an exported HF directory (bf16 weights, tokenizer beside them, its own
    generation_config) failing to export or being widened inexactly."""
    hf_dir = export_hf(ckpt, tmp_path / "hf", dtype="bfloat16")
    config = json.loads((hf_dir / "generation_config.json").read_text(encoding="utf-8"))
    config["top_k"] = 20
    (hf_dir / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    path = export_gguf(resolve_checkpoint(str(hf_dir)), tmp_path / "gguf", "f32")
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.sampling.top_k") == 20
    bf16 = load_file(str(hf_dir / "model.safetensors"))
    assert np.array_equal(weights(reader)["token_embd.weight"], bf16["model.embed_tokens.weight"].double().numpy())
    original = gguf.GGUFReader(exports["f32"])
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert field(reader, key) == field(original, key), key
    assert "PARAMETER top_k 20" in (tmp_path / "gguf" / "Modelfile").read_text(encoding="utf-8")


def render_go_template(template: str, messages: list[dict[str, str]]) -> str:
    """Just enough of Go's text/template for the Modelfile: `{{-`/`-}}` trim whitespace on their side,
    `{{ range .Messages }}...{{ end }}` repeats its body with `.Role` and `.Content` of each message."""
    template = re.sub(r"\s*\{\{-\s*", "{{", template)
    template = re.sub(r"\s*-\}\}\s*", "}}", template)
    match = re.fullmatch(r"(.*?)\{\{range \.Messages\s*\}\}(.*?)\{\{\s*end\s*\}\}(.*)", template, re.S)
    assert match, template
    head, body, tail = match.groups()
    assert "{{" not in head + tail
    parts = [body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages]
    return head + "".join(parts) + tail


def test_modelfile_template_renders_like_the_chat_template(ckpt: Checkpoint, exports: dict[str, Path]) -> None:
    """Guards against Ollama prompting the model in another format than SFT trained (a lost newline or
    missing generation prompt), and against a Modelfile without the stop token or sampling defaults."""
    text = (exports["q8_0"].parent / "Modelfile").read_text(encoding="utf-8")
    assert text.splitlines()[1] == "FROM ./model.gguf"
    assert 'PARAMETER stop "</s>"' in text and "PARAMETER temperature 0.8" in text and "PARAMETER top_p 0.9" in text
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    tok = load_tokenizer(ckpt.tokenizer_dir)
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1 plus 2?"},
                    {"role": "assistant", "content": "3"}, {"role": "user", "content": "红色 and\nblue?"}]
    for messages in (conversation, conversation[1:2]):
        jinja = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_go_template(template, messages) == jinja


def test_q8_0_quantizes_only_rows_divisible_by_32() -> None:
    """Guards against handing gguf's Q8_0 a row it cannot block (it raises) or quantizing norm weights."""
    assert storage_type((64, 512), "q8_0") == Q8_0
    assert storage_type((64, 48), "q8_0") == F16
    assert storage_type((512,), "q8_0") == F32
    assert storage_type((64, 48), "bf16") == BF16 and storage_type((64,), "f16") == F32


def test_moe_checkpoint_is_refused(ckpt: Checkpoint, tmp_path: Path) -> None:
    """Guards against writing an MoE model as a dense llama file that silently drops its experts."""
    moe = Checkpoint(path=ckpt.path, state={**ckpt.state, "model": ModelConfig(**{**ckpt.state["model"], "use_moe": True}).model_dump()})
    with pytest.raises(ExportError, match="mixture-of-experts"):
        export_gguf(moe, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change", [
    {"normalizer": {"type": "NFKC"}},
    {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}},
    {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}},
])
def test_tokenizer_llama_cpp_would_split_differently_is_refused(ckpt: Checkpoint, tmp_path: Path, change: dict) -> None:
    """Guards against exporting a tokenizer under "gpt-2" that llama.cpp would then tokenize differently
    from transformers (a normalizer, a prefix space, another pre-tokenizer)."""
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt.path, copy)
    spec_path = copy / "tokenizer" / "tokenizer.json"
    spec_path.write_text(json.dumps({**json.loads(spec_path.read_text(encoding="utf-8")), **change}), encoding="utf-8")
    with pytest.raises(ExportError, match="byte-level BPE tokenizers only") as error:
        export_gguf(read_checkpoint(copy), tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "model.gguf").exists()


def test_a_failed_write_keeps_the_previous_file(ckpt: Checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a crash mid-export leaving a truncated model.gguf (or a temporary file) behind."""
    path = export_gguf(ckpt, tmp_path, "q8_0")
    before = path.read_bytes()

    def crash(self: gguf.GGUFWriter, **_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(ckpt, tmp_path, "f32")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "model.gguf"]


def test_cli_export_gguf_and_dtype_that_does_not_fit(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Guards against `--format gguf` not reaching the GGUF writer, and a dtype of the other format
    (q8_0 for hf, float16 for gguf) giving a traceback or a silent default instead of one clear line."""
    from studio.cli import main

    assert main(["export", str(trained_run), str(tmp_path / "out"), "--format", "gguf", "--dtype", "q8_0"]) == 0
    assert "ollama create" in capsys.readouterr().out
    assert field(gguf.GGUFReader(tmp_path / "out" / "model.gguf"), "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert main(["export", str(trained_run), str(tmp_path / "f16"), "--format", "gguf"]) == 0
    assert field(gguf.GGUFReader(tmp_path / "f16" / "model.gguf"), "general.file_type") == int(gguf.LlamaFileType.MOSTLY_F16)
    assert main(["export", str(trained_run), str(tmp_path / "x"), "--format", "gguf", "--dtype", "float16"]) == 2
    assert "does not fit --format gguf" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
    assert main(["export", str(trained_run), str(tmp_path / "y"), "--dtype", "q8_0"]) == 2
    assert "choose one of float32, bfloat16, float16" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
