"""Data preparation cost: tokenizer training, and jsonl -> token cache throughput (cold and cached).

    python -m bench.data [--pretrain-mb 100] [--sft-mb 25] [--vocab 6400] [--quick] [--no-publish]

A varied corpus is generated first into a temporary folder (never the repo): the built-in dataset's
sentences and chats recombined with seeded shuffles, most names swapped for invented ones drawn from
a long-tailed pool and numbers redrawn, so BPE meets tens of thousands of distinct words instead of
the built-in corpus's 176. Then each phase runs in its own subprocess, so its peak RSS is its own:

  tokenizer       engine.data.tokenizer.train_tokenizer on the pretrain corpus (time, peak RSS)
  cache pretrain  engine.data.token_cache.build_token_cache, cold: MB/s of jsonl, tokens produced
  cache sft       the same for the SFT corpus (chat template + loss mask per conversation)
  cache hit       both calls again in a fresh process, as epoch 2 or a later run would: nothing is tokenized

MB is 10^6 bytes of jsonl; RSS is in MiB. --quick uses ~5 MB of pretrain text (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train import ROOT, publish
from engine.hardware.process_memory import peak_rss_mb  # VmHWM, not ru_maxrss (which holds the parent's)

DATASET = ROOT / "dataset"
_PART = re.compile(r"([A-Za-z]{4,}|\d+)")  # the pieces a perturbation may replace: long words, numbers


# --------------------------------------------------------------------------------------------
# The generated corpus


class Perturber:
    """Rewrites text pieces deterministically: long Latin words -> invented names, numbers -> new numbers.

    Invented names come from a pool drawn once (syllables of the corpus's own words) and are chosen with
    Zipf-like weights, so some are frequent and most are rare: the shape BPE sees in real text.
    """

    def __init__(self, texts: list[str], rng: random.Random, n_names: int = 40_000, swap: float = 0.5) -> None:
        words = sorted({w.lower() for t in texts for w in re.findall(r"[A-Za-z]{4,}", t)})
        syllables = sorted({w[i:i + 3] for w in words for i in range(0, len(w) - 2, 2)})
        self.names = ["".join(rng.choices(syllables, k=rng.randint(2, 4))).capitalize() for _ in range(n_names)]
        # cum_weights once: random.choices with cumulative weights is a bisect per draw.
        cum, total = [], 0.0
        for rank in range(1, n_names + 1):
            total += 1.0 / rank
            cum.append(total)
        self.cum, self.rng, self.swap = cum, rng, swap

    def __call__(self, parts: list[str]) -> str:
        """parts: text split by _PART (odd indices are replaceable pieces)."""
        rng, out = self.rng, parts[:]
        for i in range(1, len(out), 2):
            if rng.random() < self.swap:
                piece = out[i]
                out[i] = str(rng.randrange(10 ** len(piece))) if piece.isdigit() else rng.choices(self.names, cum_weights=self.cum)[0]
        return "".join(out)


def _records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _sentences(text: str) -> list[str]:
    """Lines and sentences of a pretrain text, separators kept (English '. ' and Chinese '。')."""
    pieces = re.split(r"(?<=[。.?？])\s*|\n", text)
    return [p for p in pieces if p.strip()]


def write_pretrain(path: Path, target_bytes: int, seed: int) -> int:
    """Pretrain jsonl of about target_bytes: each document is 3-12 perturbed sentences of the built-in corpus."""
    rng = random.Random(seed)
    texts = [record["text"] for record in _records(DATASET / "pretrain.jsonl")]
    perturb = Perturber(texts, rng)
    pool = sorted({s for t in texts for s in _sentences(t)})
    templates = [_PART.split(s) for s in pool]
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            sentences = [perturb(rng.choice(templates)) for _ in range(rng.randint(3, 12))]
            joiner = "\n" if rng.random() < 0.3 else " "
            line = json.dumps({"text": joiner.join(sentences)}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
    return written


def write_sft(path: Path, target_bytes: int, seed: int) -> int:
    """SFT jsonl of about target_bytes: 1-4 built-in chats chained (system message kept first), contents perturbed."""
    rng = random.Random(seed + 1)
    chats = [record["conversations"] for record in _records(DATASET / "sft.jsonl")]
    perturb = Perturber([m["content"] for c in chats for m in c], rng)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            picked = [rng.choice(chats) for _ in range(rng.randint(1, 4))]
            system = [m for m in picked[0] if m["role"] == "system"][:1]
            turns = [{"role": m["role"], "content": perturb(_PART.split(m["content"]))}
                     for chat in picked for m in chat if m["role"] != "system"]
            line = json.dumps({"conversations": system + turns}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
    return written


# --------------------------------------------------------------------------------------------
# Phases (each one in its own process)


def phase_tokenizer(work: Path, vocab: int) -> dict:
    """train_tokenizer as a run calls it. Besides the process peak (which includes importing transformers
    to save and check the result), RSS is sampled while BPE trains, up to that first transformers call."""
    import threading

    import psutil

    import engine.data.tokenizer as tokenizer_module

    process = psutil.Process()
    before = process.memory_info().rss
    bpe_peak, bpe_done = [before], threading.Event()

    def sample() -> None:
        while not bpe_done.wait(0.02):
            bpe_peak[0] = max(bpe_peak[0], process.memory_info().rss)

    real_load = tokenizer_module.load_tokenizer

    def load_after_bpe(directory):  # train_tokenizer loads the saved tokenizer once BPE is done
        bpe_done.set()
        return real_load(directory)

    tokenizer_module.load_tokenizer = load_after_bpe
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = tokenizer_module.train_tokenizer(work / "pretrain.jsonl", work / "tokenizer", vocab)
    seconds = time.perf_counter() - started
    bpe_done.set()
    sampler.join()
    mib = 1024 * 1024
    return {"seconds": seconds, "bpe_seconds": report.train_seconds, "lines": report.train_lines,
            "chars": report.train_chars, "vocab": report.vocab_size, "chars_per_token": report.chars_per_token,
            "rss_before_mb": before / mib, "bpe_peak_rss_mb": bpe_peak[0] / mib, "peak_rss_mb": peak_rss_mb()}


def phase_cache(work: Path, kind: str) -> dict:
    """Cold build, then the same call again (epoch 2 within a run: the cache is found, nothing tokenized)."""
    # transformers' first tokenizer load imports its lazy modules (~2 s here): a one-off cost per process,
    # kept out of the throughput and reported on its own.
    started = time.perf_counter()
    from engine.data.token_cache import build_token_cache
    from engine.data.tokenizer import load_tokenizer

    load_tokenizer(work / "tokenizer")
    imports = time.perf_counter() - started
    setup_rss = peak_rss_mb()
    source = work / f"{kind}.jsonl"
    started = time.perf_counter()
    cache = build_token_cache(source, work / "tokenizer", kind, work / "cache")  # type: ignore[arg-type]
    cold = time.perf_counter() - started
    assert not cache.from_cache, "the cache folder was not empty: the cold build was not measured"
    started = time.perf_counter()
    again = build_token_cache(source, work / "tokenizer", kind, work / "cache")  # type: ignore[arg-type]
    warm = time.perf_counter() - started
    assert again.from_cache and again.n_tokens == cache.n_tokens
    return {"kind": kind, "bytes": source.stat().st_size, "docs": cache.n_docs, "tokens": cache.n_tokens,
            "loss_tokens": cache.meta.get("n_loss_tokens"), "seconds": cold, "import_s": imports, "hit_same_process_s": warm,
            "setup_peak_rss_mb": setup_rss, "peak_rss_mb": peak_rss_mb()}


def phase_hit(work: Path) -> dict:
    """A later run in a new process: the cache is found by content hash; the time is mostly hashing the file."""
    from engine.data.token_cache import build_token_cache

    out = {}
    for kind in ("pretrain", "sft"):
        started = time.perf_counter()
        cache = build_token_cache(work / f"{kind}.jsonl", work / "tokenizer", kind, work / "cache")  # type: ignore[arg-type]
        out[kind] = time.perf_counter() - started
        assert cache.from_cache, f"{kind}: a later run rebuilt the cache"
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_phase(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.data", "--worker", *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {args[0]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


def report_body(sizes: dict, tok: dict, caches: list[dict], hit: dict, args: argparse.Namespace) -> str:
    mb = 1e6
    lines = [
        (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; generated corpus (seed {args.seed}): "
         f"pretrain {sizes['pretrain'] / mb:.1f} MB, SFT {sizes['sft'] / mb:.1f} MB of jsonl"
         f"{' (quick run: small files, noisy)' if args.quick else ''}."),
        "",
        (f"- tokenizer training (ByteLevel BPE, vocab {tok['vocab']:,}) on {tok['lines']:,} lines, {tok['chars'] / 1e6:.1f}M chars: "
         f"{tok['seconds']:.1f} s in all ({tok['bpe_seconds']:.1f} s in BPE); RSS {tok['rss_before_mb']:,.0f} MiB before, "
         f"{tok['bpe_peak_rss_mb']:,.0f} MiB at most while BPE trains, process peak {tok['peak_rss_mb']:,.0f} MiB "
         "(with transformers, loaded to check the saved tokenizer); "
         f"{tok['chars_per_token']:.2f} held-out chars/token"),
        "",
        ("| token cache | jsonl MB | docs | tokens | cold build s | MB/s | tokens/s | peak RSS MiB (after setup) "
         "| epoch 2 (same process) | later run (new process) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in caches:
        lines.append(
            f"| {c['kind']} | {c['bytes'] / mb:.1f} | {c['docs']:,} | {c['tokens']:,} | {c['seconds']:.1f} | "
            f"{c['bytes'] / mb / c['seconds']:.2f} | {c['tokens'] / c['seconds']:,.0f} | "
            f"{c['peak_rss_mb']:,.0f} ({c['setup_peak_rss_mb']:,.0f}) | "
            f"{c['hit_same_process_s'] * 1000:.0f} ms | {hit[c['kind']] * 1000:.0f} ms |")
    lines += ["", (f"Cold builds exclude importing transformers and its first tokenizer load ({caches[0]['import_s']:.1f} s, "
                   "once per process). A cache hit tokenizes nothing: it hashes the jsonl (the key is its content) "
                   "and maps the token file.")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-mb", type=float, default=100.0)
    parser.add_argument("--sft-mb", type=float, default=25.0,
                        help="SFT encodes slower (a template render and an encode with character offsets per conversation)")
    parser.add_argument("--vocab", type=int, default=6400, help="the tutorial's vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="~5 MB pretrain, ~1 MB SFT: a smoke run in seconds")
    parser.add_argument("--no-publish", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        phase, work = args.worker[0], Path(args.worker[1])
        result = (phase_tokenizer(work, args.vocab) if phase == "tokenizer" else
                  phase_cache(work, args.worker[2]) if phase == "cache" else phase_hit(work))
        print(json.dumps(result))
        return 0
    if args.quick:
        args.pretrain_mb, args.sft_mb = 5.0, 1.0

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        sizes = {"pretrain": write_pretrain(work / "pretrain.jsonl", int(args.pretrain_mb * 1e6), args.seed),
                 "sft": write_sft(work / "sft.jsonl", int(args.sft_mb * 1e6), args.seed)}
        print(f"generated {sizes['pretrain'] / 1e6:.1f} MB pretrain + {sizes['sft'] / 1e6:.1f} MB SFT jsonl "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        tok = run_phase("tokenizer", str(work), "--vocab", str(args.vocab))
        print(f"tokenizer: {tok['seconds']:.1f} s, peak RSS {tok['peak_rss_mb']:,.0f} MiB", flush=True)
        caches = []
        for kind in ("pretrain", "sft"):
            caches.append(run_phase("cache", str(work), kind))
            c = caches[-1]
            print(f"cache {kind}: {c['seconds']:.1f} s ({c['bytes'] / 1e6 / c['seconds']:.2f} MB/s, {c['tokens']:,} tokens), "
                  f"again {c['hit_same_process_s'] * 1000:.0f} ms, peak RSS {c['peak_rss_mb']:,.0f} MiB", flush=True)
        hit = run_phase("hit", str(work))
        body = report_body(sizes, tok, caches, hit, args)
    publish("Data preparation", body, print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
