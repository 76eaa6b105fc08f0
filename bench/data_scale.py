"""Token cache builds at size, one worker against all cores, side by side in one run (issue 11).

    python -m bench.data_scale [--pretrain-mb 1000] [--sft-mb 300] [--tool-share 0.15] [--quick] [--no-publish]

Generates a minimind-format pretrain file and an SFT file in which about --tool-share of the conversations
use tools (tool specs on the system message as a JSON string, calls as a JSON string on an empty-content
assistant turn, a tool result, the final answer) or reasoning (reasoning_content), the rest being the
built-in chats recombined as bench.data does. A tokenizer (vocab 6400) is trained on the first 20M
characters. Then every build runs in its own process, cold, so peak RSS is its own, for each kind:
the reference path (apply_chat_template + encode_batch, as the cache was built before its fast paths) on
one core; the fast path on one core at a tenth of the file and at full size; and the fast path with
workers on all cores but one (the default for large files) and on all cores. Peak RSS is the parent's and
the largest worker's (each worker holds a batch, the tokenizer and its bounded encoding caches).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.data import _PART, DATASET, Perturber, _records, write_pretrain
from bench.train import ROOT, publish
from engine.hardware.process_memory import peak_rss_mb

CITIES = ["北京", "上海", "Paris", "London", "Tokyo", "深圳", "Berlin", "杭州"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "查询城市天气",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALC = {"name": "calculate", "description": "evaluate an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}}}


def _tool_chat(rng: random.Random) -> list[dict]:
    if rng.random() < 0.5:
        city, weather, temp = rng.choice(CITIES), rng.choice(["晴", "rain", "多云"]), rng.randint(-5, 35)
        ask, call = f"{city}今天天气怎么样？", {"name": "get_weather", "arguments": {"city": city}}
        result = json.dumps({"city": city, "weather": weather, "temp": temp}, ensure_ascii=False)
        answer = f"{city}今天的天气是 {weather}，气温 {temp} 度。"
    else:
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        ask, call = f"What is {a} times {b}?", {"name": "calculate", "arguments": {"expr": f"{a}*{b}"}}
        result, answer = str(a * b), f"{a} times {b} is {a * b}."
    return [{"role": "system", "content": "你是一个可以调用工具的助手。", "tools": json.dumps([WEATHER, CALC], ensure_ascii=False)},
            {"role": "user", "content": ask},
            {"role": "assistant", "content": "", "tool_calls": json.dumps([call], ensure_ascii=False)},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": answer}]


def zh_vocabulary(rng: random.Random, n_words: int = 60_000) -> list[str]:
    """Invented Chinese-like words: 1-4 ideographs, characters drawn Zipf-like from 4,000 of the basic block."""
    chars = [chr(0x4E00 + i) for i in rng.sample(range(0x5200), 4000)]
    cum, total = [], 0.0
    for rank in range(1, len(chars) + 1):
        total += 1.0 / rank
        cum.append(total)
    return ["".join(rng.choices(chars, cum_weights=cum, k=rng.choice((1, 2, 2, 2, 3, 4)))) for _ in range(n_words)]

def write_pretrain_zh(path: Path, target_bytes: int, seed: int) -> int:
    """Chinese-heavy pretrain jsonl: sentences of 1-4 clauses of 3-10 Zipf-drawn invented words, no spaces but
    around the odd number, as a Chinese corpus is: long runs of ideographs, each run a pre-token rarely seen twice."""
    rng = random.Random(seed + 2)
    words = zh_vocabulary(rng)
    cum, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cum.append(total)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            sentences = []
            for _ in range(rng.randint(3, 15)):
                clauses = ["".join(rng.choices(words, cum_weights=cum, k=rng.randint(3, 10))) for _ in range(rng.randint(1, 4))]
                if rng.random() < 0.1:
                    clauses[-1] += f" {rng.randint(1, 2026)} "
                sentences.append("，".join(clauses) + rng.choice("。。。？！"))
            line = json.dumps({"text": ("\n" if rng.random() < 0.3 else "").join(sentences)}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
    return written


def write_sft_mixed(path: Path, target_bytes: int, seed: int, tool_share: float) -> tuple[int, int]:
    """(bytes written, conversations with tools or reasoning)."""
    rng = random.Random(seed + 1)
    chats = [record["conversations"] for record in _records(DATASET / "sft.jsonl")]
    perturb = Perturber([m["content"] for c in chats for m in c], rng)
    written = special = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            if rng.random() < tool_share:
                special += 1
                if rng.random() < 0.6:
                    turns = _tool_chat(rng)
                else:
                    chat = [{"role": m["role"], "content": perturb(_PART.split(m["content"]))} for m in rng.choice(chats)]
                    turns = chat[:-1] + [{**chat[-1], "reasoning_content": "先想一想：" + perturb(_PART.split(chat[-1]["content"]))}]
            else:
                picked = [rng.choice(chats) for _ in range(rng.randint(1, 4))]
                system = [m for m in picked[0] if m["role"] == "system"][:1]
                turns = system + [{"role": m["role"], "content": perturb(_PART.split(m["content"]))}
                                  for chat in picked for m in chat if m["role"] != "system"]
            line = json.dumps({"conversations": turns}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
    return written, special


def phase_build(work: Path, kind: str, workers: int, reference: bool, source_name: str, tokenizer: str) -> dict:
    """One cold build in this fresh process; transformers' import is timed apart (a one-off per process).
    reference: the libraries' own apply_chat_template and encode_batch (engine.data.cache_build.REFERENCE_ENV)
    on one core (the tokenizer's thread pool off), the way the cache was built before its fast paths."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from engine.data.cache_build import REFERENCE_ENV

    os.environ[REFERENCE_ENV] = "1" if reference else "0"
    started = time.perf_counter()
    from engine.data.fast_bpe import split_patterns
    from engine.data.token_cache import build_token_cache
    from engine.data.tokenizer import load_tokenizer

    load_tokenizer(work / tokenizer)
    split_patterns()  # read from the user's cache folder (computed once per library versions)
    imports = time.perf_counter() - started
    source = work / source_name
    watcher = WorkerPeaks()
    started = time.perf_counter()
    folder = work / f"cache-{source_name}-{workers}-{'reference' if reference else 'fast'}"
    cache = build_token_cache(source, work / tokenizer, kind, folder, workers=workers)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    assert not cache.from_cache, "the cold build found a cache: nothing was measured"
    return {"kind": kind, "file": source_name.replace("-tenth", ""), "workers": workers, "reference": reference,
            "bytes": source.stat().st_size, "tokens": cache.n_tokens, "seconds": seconds, "import_s": imports,
            "rss_mb": peak_rss_mb(), "worker_rss_mb": watcher.stop() if workers > 1 else None,
            "tokens_bin": str(cache.dir / "tokens.bin"), "full": "-tenth" not in source_name}


class WorkerPeaks:
    """The largest peak RSS among this process's children (the build's workers), polled from /proc every 0.2 s:
    a worker's VmHWM only grows, so the last reading before it exits is its peak, give or take 0.2 s."""

    def __init__(self) -> None:
        import threading

        self.peak, self.done = 0.0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.wait(0.2):
            for child in me.children(recursive=True):
                self.peak = max(self.peak, peak_rss_mb(child.pid))

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak


def run_phase(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.data_scale", "--worker", *args], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cjk_share(path: Path, sample: int = 20_000_000) -> float:
    """Share of CJK ideographs among the characters of the file's first `sample` bytes."""
    text = path.open(encoding="utf-8").read(sample)
    return sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff") / max(1, len(text))


def report_body(rows: list[dict], sft_special: float, shares: dict[str, float], identical: bool, quick: bool) -> str:
    cores = os.cpu_count() or 1
    head = (f"{cores} cores. Generated minimind-format files (bench.data's recombined built-in corpus, invented names): "
            f"CJK ideographs are {shares['pretrain']:.0%} of the pretrain characters and {shares['sft']:.0%} of the SFT "
            f"ones; {sft_special:.0%} of the SFT conversations use tools or reasoning. `pretrain-zh` is Chinese-heavy "
            f"({shares['pretrain-zh']:.0%} ideographs, invented Zipf-drawn words, its own tokenizer)"
            f"{' (quick run: small files, noisy)' if quick else ''}. Every build cold, in its own process. "
            "`reference` is the libraries' own apply_chat_template + encode_batch on one core (the cache as built "
            "before this benchmark's fast paths); `fast` is engine.data.chat_render + engine.data.fast_bpe (same bytes).")
    lines = [head, "",
             "| file | jsonl MB | path | workers | cores used | s | MB/s | MB/s per core | vs reference | "
             "peak RSS MiB (parent / largest worker) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["file"]: r["bytes"] / r["seconds"] for r in rows if r["reference"]}
    for r in rows:
        rate = r["bytes"] / 1e6 / r["seconds"]
        worker = f"{r['worker_rss_mb']:,.0f}" if r["worker_rss_mb"] else "-"
        lines.append(f"| {r['file'].removesuffix('.jsonl')} | {r['bytes'] / 1e6:,.0f} | {'reference' if r['reference'] else 'fast'} | "
                     f"{r['workers']} | {r['workers']} | {r['seconds']:.1f} | {rate:.2f} | {rate / r['workers']:.2f} | "
                     f"{r['bytes'] / r['seconds'] / base[r['file']]:.2f}x | {r['rss_mb']:,.0f} / {worker} |")
    lines += ["", (f"Caches of every full-size build of a file byte-identical: {'yes' if identical else 'NO'}. Times exclude "
                   f"importing transformers in the parent ({rows[0]['import_s']:.1f} s); workers pay theirs inside the "
                   "build. The rows at a tenth of the size show how peak RSS grows with the file.")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-mb", type=float, default=1000.0)
    parser.add_argument("--sft-mb", type=float, default=300.0)
    parser.add_argument("--zh-mb", type=float, default=300.0, help="the Chinese-heavy pretrain file")
    parser.add_argument("--tool-share", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 MB pretrain, 30 MB SFT")
    parser.add_argument("--no-publish", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work, kind, workers, reference, source, tokenizer = args.worker
        print(json.dumps(phase_build(Path(work), kind, int(workers), reference == "1", source, tokenizer)))
        return 0
    if args.quick:
        args.pretrain_mb, args.sft_mb, args.zh_mb = 100.0, 30.0, 30.0
    with tempfile.TemporaryDirectory(prefix="bench-data-scale-") as tmp:
        work = Path(tmp)
        write_pretrain(work / "pretrain.jsonl", int(args.pretrain_mb * 1e6), args.seed)
        _, special = write_sft_mixed(work / "sft.jsonl", int(args.sft_mb * 1e6), args.seed, args.tool_share)
        write_pretrain_zh(work / "pretrain-zh.jsonl", int(args.zh_mb * 1e6), args.seed)
        with open(work / "sft.jsonl", "rb") as handle:
            n_sft = sum(1 for _ in handle)
        files = {"pretrain": ("pretrain", "tokenizer"), "sft": ("sft", "tokenizer"), "pretrain-zh": ("pretrain", "tokenizer-zh")}
        for name in files:  # a tenth of each file, cut at a line end, for the RSS-in-size rows
            with open(work / f"{name}.jsonl", "rb") as src, open(work / f"{name}-tenth.jsonl", "wb") as out:
                n_lines = sum(1 for _ in src)
                src.seek(0)
                out.writelines(itertools.islice(src, n_lines // 10))
        shares = {name: cjk_share(work / f"{name}.jsonl") for name in files}
        from engine.data.tokenizer import train_tokenizer

        train_tokenizer(work / "pretrain.jsonl", work / "tokenizer", 6400, max_train_chars=20_000_000)
        train_tokenizer(work / "pretrain-zh.jsonl", work / "tokenizer-zh", 6400, max_train_chars=20_000_000)
        cores = os.cpu_count() or 1
        rows = []
        for name, (kind, tokenizer) in files.items():
            plan = ([(1, True, f"{name}.jsonl"), (1, False, f"{name}-tenth.jsonl"), (1, False, f"{name}.jsonl")]
                    + [(n, False, f"{name}.jsonl") for n in sorted({max(2, cores - 1), cores})])
            for workers, reference, source in plan:
                rows.append(run_phase(str(work), kind, str(workers), "1" if reference else "0", source, tokenizer))
                r = rows[-1]
                print(f"{source} x{workers}{' reference' if reference else ''}: {r['seconds']:.1f} s, "
                      f"{r['bytes'] / 1e6 / r['seconds']:.2f} MB/s, RSS {r['rss_mb']:.0f} MiB", flush=True)
        from engine.data.token_cache import file_digest

        digests = {(r["file"], file_digest(Path(r["tokens_bin"]))) for r in rows if r["full"]}
        identical = len(digests) == len(files)  # one token file per file, whatever the path and the workers
        body = report_body(rows, special / n_sft, shares, identical, args.quick)
    from engine.hardware.cpu import describe_cpu

    publish(f"Token cache at size: reference and fast paths, one core and all cores, on {describe_cpu()}", body,
            print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
