"""MFU that can be trusted: the CPU facts it rests on, the probe, and never a value above 100%."""

from __future__ import annotations

import json

import pytest

from engine.events import mfu_text, parse_event
from engine.hardware import peak
from engine.hardware.cpu import (
    CpuInfo,
    describe_cpu,
    flops_per_cycle,
    isa_peak_estimate_tflops,
    parse_cpuinfo,
)
from engine.hardware.peak import MfuMeter, Peak
from engine.runs.pipeline import run_pipeline
from engine.runs.run_dir import create_run

AMD = """processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2600.000
flags\t\t: fpu sse sse2 avx2 fma avx512f avx512_vnni avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n"""
XEON = """model name\t: Intel(R) Xeon(R) Platinum 8480+\ncpu MHz\t\t: 2000.0
flags\t\t: avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"""


def test_cpu_facts_name_the_kind_of_machine():
    """Guards the benchmark labels: an AMX Xeon and an AVX512-BF16 EPYC must never read the same."""
    model, flags, mhz = parse_cpuinfo(AMD)
    amd = CpuInfo(model, flags, 2, mhz)
    assert (model, mhz, amd.kind, amd.has_fast_bf16) == ("AMD EPYC", 2600.0, "AVX512-BF16, no AMX", True)
    assert amd.isa == ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
    assert describe_cpu(amd) == ("AMD EPYC (AVX512-BF16, no AMX; avx2 fma avx512f avx512_vnni avx512_bf16), "
                                 "2 logical CPUs, 2.60 GHz")
    xeon = CpuInfo(*parse_cpuinfo(XEON)[:2], 2, None)
    assert xeon.kind == "AMX" and isa_peak_estimate_tflops(2, "bfloat16", xeon) is None
    assert flops_per_cycle(xeon.flags, "bfloat16") > flops_per_cycle(amd.flags, "bfloat16") > flops_per_cycle(amd.flags, "float32")
    assert CpuInfo(*parse_cpuinfo("")[:2], 1, None).kind == "no AVX2"


def test_the_probe_keeps_the_best_timing(monkeypatch, tmp_path):
    """Guards against one busy moment setting the peak: the best of several timings counts, and a
    re-probe can only raise the recorded peak."""
    timings = iter([0.2, 0.9, 0.5, 0.4, 0.3, 0.1] + [0.7] * 6)
    monkeypatch.setattr(peak, "measure_matmul_tflops", lambda dtype, size, seconds: next(timings))
    assert peak.cpu_peak_tflops("bfloat16", tmp_path) == 0.9
    assert peak.cpu_peak_tflops("bfloat16", tmp_path) == 0.9  # from the record: no probe
    assert peak.cpu_peak_tflops("bfloat16", tmp_path, refresh=True) == 0.9  # 0.7 is lower: kept 0.9


def test_mfu_is_never_above_one_and_says_why_when_the_peak_is_wrong():
    """Guards the 115% MFU seen on an AMD EPYC: a step faster than the peak triggers one re-probe; if
    that is still lower, MFU is unknown (with the reason, warned once), not a value above 100%."""
    warnings: list[str] = []
    probes = iter([2e12])
    meter = MfuMeter(Peak(1e12, "probed", reprobe=lambda: next(probes)), warn=warnings.append)
    assert meter(0.5e12) == 0.5
    assert meter(1.5e12) == 0.75  # the re-probe found 2 TFLOP/s
    assert meter(3e12) is None  # no second re-probe: unknown from now on
    assert meter.note and meter.note.startswith("peak unknown") and "runtime.peak_tflops" in meter.note
    assert meter(0.1e12) is None and len(warnings) == 1
    override = MfuMeter(Peak(1e12, "runtime.peak_tflops = 1.0"), warn=warnings.append)
    assert override(2e12) is None and "runtime.peak_tflops = 1.0" in override.note


def test_a_run_with_an_under_reading_probe_never_reports_more_than_100_percent(make_preset, monkeypatch):
    """Guards the real loop and the studio's cell: with a simulated probe far below the machine's
    real speed every step event carries mfu None, the reason, and validates against the schema
    (which rejects mfu > 1); the monitor shows 'peak unknown'."""
    monkeypatch.setattr(peak, "probe_cpu_peak_tflops", lambda dtype: 1e-9)
    preset = make_preset(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 4})
    run_dir = create_run(preset)
    run_pipeline(run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["kind"] == "step"]
    assert steps and all(e["mfu"] is None and e["mfu_note"].startswith("peak unknown") for e in steps)
    for event in events:
        parse_event(event)
    assert mfu_text(parse_event(steps[-1])) == "peak unknown"
    assert sum("peak unknown" in e.get("message", "") for e in events if e["kind"] == "warning") == 1
    start = next(e for e in events if e["kind"] == "stage_start" and e["stage"] == "pretrain")
    assert start["peak_source"].startswith("probed float32 matmul peak")


def test_the_schema_rejects_mfu_above_one():
    """Guards the promise in the schema itself, for any writer."""
    from pydantic import ValidationError

    step = {"v": 1, "t": 0.0, "kind": "step", "stage": "pretrain", "step": 1, "total_steps": 2, "loss": 1.0,
            "lr": 1e-3, "grad_norm": None, "tokens_per_s": 1.0, "samples_per_s": 1.0, "eta_s": 1.0,
            "tokens_seen": 1, "epoch": 0.1}
    parse_event({**step, "mfu": 0.4})
    with pytest.raises(ValidationError):
        parse_event({**step, "mfu": 1.15})
    assert mfu_text(parse_event({**step, "mfu": 0.4})) == "40.0%" and mfu_text(parse_event(step)) == "-"
