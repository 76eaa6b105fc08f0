"""Held-out questions answered greedily and scored by exact match: the check a training stage runs on its final
checkpoint when its preset names a `heldout_path` (the built-in dataset/heldout.jsonl checks the tiny preset).

The answer is compared without its reasoning (a `<think>` block is not part of what is scored), after
stripping the expected answer's surrounding whitespace.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.chat.reply import parse_reply
from engine.chat.session import ChatSession
from engine.errors import DataError
from engine.model.generate import Sampling


def read_heldout(path: Path) -> list[dict]:
    """Held-out questions: one {"messages": [...], "answer": "..."} object per line."""
    items = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item["messages"], list) or not isinstance(item["answer"], str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f'{path}:{line_no}: expected {{"messages": [{{"role": "user", "content": ...}}], "answer": "..."}}. '
                "Fix or remove that line."
            ) from None
        items.append(item)
    return items


@torch.no_grad()  # not inference_mode: tensors cached here (rotary tables) are reused by training
def exact_match(session: ChatSession, items: list[dict], max_new_tokens: int = 32) -> dict:
    """Greedy answers to held-out questions ({"messages": [...], "answer": str}) scored by exact match."""
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    results = []
    for item in items:
        session.clear()
        *earlier, last = item["messages"]
        session.history = list(earlier)
        stream = session.reply(last["content"], greedy)
        got = parse_reply("".join(stream), stream.start).answer  # scored without its reasoning
        results.append({"id": item.get("id"), "kind": item.get("kind"), "expected": item["answer"], "got": got,
                        "ok": got == item["answer"].strip()})
    session.clear()
    correct = sum(r["ok"] for r in results)
    by_kind: dict[str, list[int]] = {}
    for r in results:
        by_kind.setdefault(r["kind"] or "all", [0, 0])
        by_kind[r["kind"] or "all"][0] += r["ok"]
        by_kind[r["kind"] or "all"][1] += 1
    return {"accuracy": correct / max(1, len(results)), "correct": correct, "total": len(results),
            "by_kind": {k: {"correct": c, "total": n} for k, (c, n) in by_kind.items()}, "results": results}
