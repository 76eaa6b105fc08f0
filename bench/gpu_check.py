"""The GPU check: a few minutes on a CUDA machine that verify the GPU paths and measure them.

    python -m bench.gpu_check [--out DIR] [--quick]

1. the device: name, capability, bf16, NVML, and the measured bf16 matmul peak;
2. training throughput, MFU and peak memory of minimind-26m and minimind-104m in bf16 autocast:
   the engine eager and torch.compile'd, Hugging Face Llama eager, plus the estimator's prediction of
   each engine peak (tokens/s is the median of measured windows after warm-up; warm-up includes compile);
3. grouped k/v attention on CUDA: SDPA with enable_gqa vs. k/v expanded to all heads;
4. the real training loop (engine.runs.pipeline) on the tiny preset with compile on: events, NVML readings,
   checkpoints, and the estimator's --calibrate path.

Each section's result is written as soon as it is known (DIR/gpu_check.json and DIR/gpu_check.md),
so a timeout keeps what was measured. Copy the markdown into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Report:
    def __init__(self, out: Path) -> None:
        self.out, self.data, self.lines = out, {}, []
        out.mkdir(parents=True, exist_ok=True)

    def section(self, name: str, data, markdown: str) -> None:
        self.data[name] = data
        self.lines.append(markdown)
        print(markdown, flush=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu_check.md").write_text("\n\n".join(self.lines) + "\n")


def device_section(report: Report) -> float:
    import torch

    from engine.hardware.readings import nvml_snapshot

    dev = torch.device("cuda")
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, count = time.perf_counter(), 10
    for _ in range(count):
        a @ b
    torch.cuda.synchronize()
    peak = 2 * 8192**3 * count / (time.perf_counter() - start) / 1e12
    info = {"name": torch.cuda.get_device_name(dev), "capability": torch.cuda.get_device_capability(dev),
            "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "nvml": nvml_snapshot(dev), "matmul_bf16_tflops": peak,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    report.section("device", info, f"### GPU check, {info['date']}\n\n{info['name']} (sm {info['capability']}), "
                   f"torch {info['torch']}, CUDA {info['cuda']}; bf16 {info['bf16']}; NVML {bool(info['nvml'])}; "
                   f"bf16 matmul 8192^3 measured {peak:.0f} TFLOP/s.")
    return peak


def training_section(report: Report, peak: float, quick: bool) -> None:
    import torch

    from bench.train import run_worker
    from engine.hardware.peak import gpu_peak_tflops

    datasheet = gpu_peak_tflops(torch.cuda.get_device_name()) or peak
    schedule = (3, 3, 5) if quick else (3, 5, 10)
    configs = [("minimind-104m", 32, 512), ("minimind-26m", 64, 512)]
    rows, results = [], []
    header = ("| shape | batch x seq | impl | compile | tokens/s | MFU (datasheet) | MFU (measured peak) | "
              "peak MiB | estimate MiB | warm-up s |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for shape, batch, seq in configs:
        for impl, compiled in (("engine", False), ("engine", True), ("hf", False)):
            try:
                r = run_worker(impl, shape, "bfloat16", False, device="cuda", compile=compiled, batch=batch, seq=seq,
                               schedule=schedule)
            except Exception as error:  # noqa: BLE001 - record and go on: the rest is still worth measuring
                rows.append(f"| {shape} | {batch}x{seq} | {impl} | {compiled} | failed: {str(error)[-300:]!r} |")
                results.append({"shape": shape, "impl": impl, "compile": compiled, "error": str(error)[-3000:]})
                report.section("training", results, "#### Training, bf16 autocast\n\n" + header + "\n" + "\n".join(rows))
                continue
            results.append(r)
            achieved = r["tokens_per_s"] * r["flops_per_token"]
            estimate = f"{r['predicted_mb']:,.0f}" if impl == "engine" else ""
            rows.append(f"| {shape} | {batch}x{seq} | {impl} | {compiled} | {r['tokens_per_s']:,.0f} | "
                        f"{achieved / (datasheet * 1e12):.1%} | {achieved / (peak * 1e12):.1%} | {r['peak_mb']:,.0f} | "
                        f"{estimate} | {r['warmup_s']:.1f} |")
            report.section("training", results, "#### Training, bf16 autocast\n\n" + header + "\n" + "\n".join(rows))


def attention_section(report: Report) -> None:
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    B, nh, nkv, T, hd = 32, 8, 2, 512, 64
    q = torch.randn(B, nh, T, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, nkv, T, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, nkv, T, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)

    def grouped():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def expanded():
        ke = k[:, :, None].expand(B, nkv, nh // nkv, T, hd).reshape(B, nh, T, hd)
        ve = v[:, :, None].expand(B, nkv, nh // nkv, T, hd).reshape(B, nh, T, hd)
        return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

    timings = {}
    for name, fn in (("enable_gqa", grouped), ("expanded k/v", expanded)):
        for _ in range(3):
            fn().sum().backward()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(20):
            fn().sum().backward()
        torch.cuda.synchronize()
        timings[name] = {"ms": (time.perf_counter() - start) / 20 * 1000,
                         "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    lines = "\n".join(f"| {n} | {t['ms']:.2f} | {t['peak_mb']:,.0f} |" for n, t in timings.items())
    report.section("attention", timings, "#### Attention fwd+bwd, B=32 T=512 8 heads / 2 kv heads, bf16\n\n"
                   "| variant | ms | peak MiB |\n|---|---:|---:|\n" + lines)


def pipeline_section(report: Report, quick: bool, device: str = "cuda") -> None:
    from engine.config import load_preset
    from engine.hardware.estimate import device_peak, estimate_stage
    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run
    from engine.train.calibrate import calibrate, detect_target

    steps = 100 if quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"runtime.device={device}", "runtime.compile=true", f"pretrain.max_steps={steps}",
                     "pretrain.eval_interval=100", "pretrain.save_interval=100", "stages=['tokenizer','pretrain']",
                     f"out_dir='{tmp}/runs'", f"runtime.cache_dir='{tmp}/cache'"]
        preset = load_preset(ROOT / "presets/tiny.toml", overrides=overrides)
        run_dir = create_run(preset)
        start = time.perf_counter()
        run_pipeline(run_dir)
        seconds = time.perf_counter() - start
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        steps_ev = [e for e in events if e.get("kind") == "step"]
        last = steps_ev[-1] if steps_ev else {}
        warnings = [e.get("message") for e in events if e.get("kind") == "warning"]
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints" / "pretrain").iterdir())
        target = detect_target(preset)
        est = estimate_stage(preset, "pretrain", target)
        cal = calibrate(preset, "pretrain", target, steps=10)
        data = {"seconds": seconds, "last_step": last, "warnings": warnings, "checkpoints": checkpoints,
                "estimate_mb": device_peak(est.memory, target) / 2**20, "estimate_tensors_mb": est.memory.peak / 2**20,
                "calibrated_tensor_peak_mb": cal.tensor_peak_bytes / 2**20, "calibrated_tokens_per_s": cal.tokens_per_s}
    report.section("pipeline", data, f"#### Real pipeline (tiny preset, compile on, {device})\n\n"
                   f"{steps} pretrain steps in {seconds:.1f} s including tokenizer and compile; last step event: "
                   f"loss {last.get('loss')}, {last.get('tokens_per_s', 0):,.0f} tok/s, MFU {last.get('mfu')}, "
                   f"mem_peak_mb {last.get('mem_peak_mb')}, gpu_util_pct {last.get('gpu_util_pct')}; warnings: "
                   f"{warnings or 'none'}; checkpoints {checkpoints}. Estimator: tensors {data['estimate_tensors_mb']:,.0f} MiB "
                   f"vs calibrated {data['calibrated_tensor_peak_mb']:,.0f} MiB (CUDA context included in both).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/gpu_check_out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="device,attention,pipeline,training")
    parser.add_argument("--device", default="cuda", help="cpu runs the pipeline section only (a smoke test of this script)")
    args = parser.parse_args()
    report = Report(Path(args.out))
    peak = 0.0
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            if name == "device":
                peak = device_section(report)
            elif name == "training":
                training_section(report, peak or 700.0, args.quick)
            elif name == "attention":
                attention_section(report)
            elif name == "pipeline":
                pipeline_section(report, args.quick, args.device)
        except Exception:  # noqa: BLE001 - one broken section must not lose the others
            report.section(f"{name}_error", traceback.format_exc(), f"#### {name}: failed\n\n```\n{traceback.format_exc()[-2500:]}\n```")
        print(f"[{name}: {time.perf_counter() - started:.1f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
