"""The pre-flight estimator: its memory count against measured peaks, and the answers it gives."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from engine.config import load_preset
from engine.errors import EngineError
from engine.hardware.estimate import (
    CPU_FRAMEWORK_BYTES,
    Target,
    device_peak,
    estimate_stage,
    largest_batch,
    parse_bytes,
    training_memory,
)
from engine.hardware.gpus import find_gpu
from engine.train.calibrate import calibrate

SMALL = ["model.hidden_size=192", "model.num_hidden_layers=3", "model.num_attention_heads=6",
         "model.num_key_value_heads=2", "model.vocab_size=3000"]


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "overrides"), [
    ("float32", ["pretrain.batch_size=8", "pretrain.max_seq_len=256"]),
    ("bfloat16", ["pretrain.batch_size=8", "pretrain.max_seq_len=256", "pretrain.accumulation_steps=2"]),
    ("float32", ["pretrain.batch_size=4", "pretrain.max_seq_len=512", "runtime.activation_checkpointing=true"]),
    ("bfloat16", ["pretrain.batch_size=4", "pretrain.max_seq_len=128", "model.use_moe=true"]),
    ("float32", ["pretrain.batch_size=4", "pretrain.max_seq_len=128", "model.dropout=0.1"]),
], ids=["fp32", "bf16-accumulating", "fp32-checkpointing", "bf16-moe", "fp32-dropout"])
def test_predicted_peak_is_within_15_percent_of_measured(dtype, overrides):
    """Guards the memory model against the engine it describes: a kernel that starts keeping more,
    accumulation, checkpointing, MoE or dropout paths that the count forgets. Compares tensor memory
    only (the framework constant is on both sides), measured by the profiler during a real step."""
    preset = load_preset("tiny", overrides=SMALL + overrides)
    target = Target("cpu", dtype)
    cfg = preset.pretrain
    calibration = calibrate(preset, "pretrain", target, steps=1, warmup=1)
    measured = calibration.tensor_peak_bytes - CPU_FRAMEWORK_BYTES
    target = dataclasses.replace(target, attention=calibration.attention)  # the kernel the step really used
    predicted = training_memory(preset.model, cfg.batch_size, cfg.max_seq_len, target,
                                preset.runtime.activation_checkpointing, cfg.accumulation_steps)
    predicted_tensors = predicted.peak - predicted.framework
    assert abs(predicted_tensors / measured - 1) <= 0.15, (predicted_tensors / 2**20, measured / 2**20)


def test_cards_of_the_tutorials_runs_are_known():
    """Guards docs/VRAM.md's tutorial rows and `--gpu`: the A40 and the RTX 50 series are found by the
    names the driver reports, and a Ti never matches its plain sibling (first match wins)."""
    assert find_gpu("NVIDIA A40").name == "A40" and find_gpu("NVIDIA A40").memory_gib == 48
    assert find_gpu("NVIDIA GeForce RTX 5060").name == "RTX 5060"
    assert find_gpu("NVIDIA GeForce RTX 5060 Ti").name == "RTX 5060 Ti"
    assert find_gpu("NVIDIA GeForce RTX 5070 Ti").name == "RTX 5070 Ti"
    assert find_gpu("5090").supports_bf16 and find_gpu("5090").memory_gib == 32


def test_largest_batch_is_the_boundary():
    """Guards the bisection: the answer fits and one more sequence does not."""
    config = load_preset("minimind-26m").model
    target = Target("cuda", "bfloat16", memory_bytes=parse_bytes("8GiB"))
    best = largest_batch(config, 512, target)
    assert best > 0
    assert device_peak(training_memory(config, best, 512, target), target) <= target.memory_bytes
    assert device_peak(training_memory(config, best + 1, 512, target), target) > target.memory_bytes
    assert largest_batch(config, 512, target, checkpointing=True) > best


def test_memory_terms_move_the_right_way():
    """Guards the structure: accumulation adds the gradients to the peak, checkpointing shrinks
    activations, bf16 halves what is kept in the compute dtype, and memory grows with the batch."""
    config = load_preset("minimind-26m").model
    fp32, bf16 = Target("cpu", "float32"), Target("cpu", "bfloat16", attention="sdpa")
    base = training_memory(config, 8, 512, fp32)
    assert training_memory(config, 8, 512, fp32, accumulation_steps=4).peak == base.peak + base.gradients
    assert training_memory(config, 8, 512, fp32, checkpointing=True).activations < base.activations / 3
    assert training_memory(config, 8, 512, bf16).activations < base.activations * 0.7
    assert training_memory(config, 16, 512, fp32).peak > base.peak


def test_gpu_without_bf16_gets_fp16_advice_and_too_small_cards_get_alternatives():
    """Guards the two pre-flight warnings users need: bf16 on a pre-Ampere card (GTX 1650) and a
    configuration that does not fit, with a smaller batch + accumulation and checkpointing offered."""
    gtx = find_gpu("NVIDIA GeForce GTX 1650")
    assert gtx is not None and not gtx.supports_bf16 and find_gpu("1650") == gtx
    preset = load_preset("minimind-104m")
    target = Target("cuda", "bfloat16", memory_bytes=int(gtx.memory_gib * 2**30), name=gtx.name, gpu=gtx)
    estimate = estimate_stage(preset, "pretrain", target)
    assert estimate.fits is False
    advice = " ".join(estimate.advice)
    assert "float16" in advice and "no bfloat16" in advice
    assert f"batch_size to {estimate.largest_batch}" in advice and "activation_checkpointing" in advice


def test_parse_bytes_reads_what_people_type():
    assert parse_bytes("8GiB") == parse_bytes("8G") == parse_bytes("8 GB") == 8 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(EngineError, match="8GiB"):
        parse_bytes("lots")


def test_estimate_command_explains_a_card_that_cannot_run_it():
    """Guards the CLI end to end: a preset that does not fit a 4 GB GTX 1650 in bf16 exits 1 and says
    why and what would fit; one that fits exits 0."""
    done = subprocess.run([sys.executable, "-m", "studio.cli", "estimate", "minimind-104m", "--gpu", "GTX 1650",
                           "--dtype", "bfloat16", "--stage", "pretrain"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    out = " ".join(done.stdout.split())
    assert "does not fit" in out and "no bfloat16" in out and "accumulation_steps" in out
    done = subprocess.run([sys.executable, "-m", "studio.cli", "estimate", "tiny", "--gpu-mem", "8GiB"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fits" in done.stdout and "sft" in done.stdout


def test_estimate_per_process_under_ddp_and_fsdp(make_preset):
    """Guards against a multi-GPU estimate that plans one GPU's memory for the whole model when FSDP shards it,
    or forgets DDP's gradient buckets, or reports the micro-batch as the global batch."""
    from engine.hardware.estimate import Target, estimate_stage

    target = Target("cuda", "bfloat16", memory_bytes=80 * 1024**3, peak_tflops=312.0)
    alone = estimate_stage(make_preset(), "pretrain", target)
    ddp = estimate_stage(make_preset(distributed={"nproc_per_node": 4}), "pretrain", target)
    fsdp = estimate_stage(make_preset(distributed={"nproc_per_node": 4, "strategy": "fsdp"}), "pretrain", target)
    assert ddp.memory.optimizer == alone.memory.optimizer and ddp.memory.gradients == 2 * alone.memory.gradients
    assert fsdp.memory.optimizer <= alone.memory.optimizer / 4 + 8 and fsdp.memory.peak < ddp.memory.peak
    cfg = make_preset().pretrain
    assert (alone.global_batch, ddp.global_batch) == (cfg.batch_size * cfg.accumulation_steps, 4 * cfg.batch_size * cfg.accumulation_steps)
    assert ddp.tokens_per_s == pytest.approx(4 * alone.tokens_per_s)
