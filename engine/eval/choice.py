"""Multiple choice by log-likelihood, scored the way lm-evaluation-harness scores a causal LM.

For each question every choice is a continuation `" " + choice` of the context (lm-eval's default
target_delimiter). Its log-likelihood is lm-eval's (HFLM._encode_pair / loglikelihood):
  - whitespace at the end of the context is moved to the start of the continuation;
  - context + continuation is encoded as one string, and the continuation's tokens are those after the
    context's own encoding (so a merge across the boundary is the continuation's, as in lm-eval);
  - an empty context starts from one prefix token: the tokenizer's BOS if it has one, else its EOS (lm-eval's
    HFLM.prefix_token_id without a custom prefix);
  - special tokens are not added (lm-eval's default add_bos_token=False).

Metrics, per question the argmax over its choices (ties to the first, as numpy's argmax):
  acc        the summed log-likelihood;
  acc_norm   the log-likelihood over the choice's length in characters (lm-eval's acc_norm; the choice
             without the delimiter);
  acc_bytes  ... over its UTF-8 bytes (what "per byte" means literally; differs from acc_norm on non-ASCII);
  acc_centered  (acc - b) / (1 - b), b the mean of 1/n_choices: 0 is guessing, 1 is every answer right.

The context is computed once per question: one forward fills a KV cache with it, the cache is copied to one
row per choice, and the choices go through in one right-padded forward (a causal mask means no real token
sees the padding after it). Questions are not batched with each other: the model's forward has no padding
mask, so contexts of different lengths cannot share a batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import DataError
from engine.eval.tasks import TARGET_DELIMITER, Question, read_questions
from engine.hardware.device import Precision
from engine.model.transformer import CausalLM


@dataclass(frozen=True)
class QuestionScore:
    id: str
    answer: int
    loglikelihoods: list[float]  # nats, one per choice
    tokens: list[int]  # continuation tokens per choice
    chars: list[int]  # characters of each choice (acc_norm's divisor)
    bytes: list[int]  # UTF-8 bytes of each choice (acc_bytes's divisor)

    @property
    def chosen(self) -> int:
        return _argmax(self.loglikelihoods)

    @property
    def chosen_norm(self) -> int:
        return _argmax([ll / n for ll, n in zip(self.loglikelihoods, self.chars)])

    @property
    def chosen_bytes(self) -> int:
        return _argmax([ll / n for ll, n in zip(self.loglikelihoods, self.bytes)])

    @property
    def correct(self) -> bool:
        return self.chosen == self.answer

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "answer": self.answer, "chosen": self.chosen, "chosen_norm": self.chosen_norm,
                "chosen_bytes": self.chosen_bytes, "correct": self.correct,
                "correct_norm": self.chosen_norm == self.answer, "loglikelihoods": self.loglikelihoods,
                "tokens": self.tokens}


@dataclass(frozen=True)
class ChoiceResult:
    task: str
    questions: list[QuestionScore] = field(default_factory=list)

    def _mean(self, hits: Sequence[bool]) -> float:
        return sum(hits) / len(hits) if hits else float("nan")

    @property
    def acc(self) -> float:
        return self._mean([q.chosen == q.answer for q in self.questions])

    @property
    def acc_norm(self) -> float:
        return self._mean([q.chosen_norm == q.answer for q in self.questions])

    @property
    def acc_bytes(self) -> float:
        return self._mean([q.chosen_bytes == q.answer for q in self.questions])

    @property
    def baseline(self) -> float:
        """Expected accuracy of guessing: the mean of 1/n_choices."""
        return sum(1 / len(q.loglikelihoods) for q in self.questions) / len(self.questions) if self.questions \
            else float("nan")

    def centered(self, accuracy: float) -> float:
        b = self.baseline
        return (accuracy - b) / (1 - b) if b < 1 else float("nan")

    @property
    def acc_centered(self) -> float:
        return self.centered(self.acc)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "n": len(self.questions), "acc": self.acc, "acc_norm": self.acc_norm,
                "acc_bytes": self.acc_bytes, "baseline": self.baseline, "acc_centered": self.acc_centered,
                "acc_norm_centered": self.centered(self.acc_norm),
                "questions": [q.to_dict() for q in self.questions]}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties go to the first


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context starts from: BOS if the tokenizer has one, else EOS (lm-eval's HFLM)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise DataError("the tokenizer has neither a BOS nor an EOS token, so a question with an empty context "
                        "cannot be scored; give every question a context.")
    return int(token)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's HFLM encodes a loglikelihood request."""
    if context == "":
        return [prefix_token_id(tokenizer)], tokenizer.encode(continuation, add_special_tokens=False)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def choice_loglikelihoods(model: CausalLM, context: list[int], continuations: list[list[int]],
                          precision: Precision | None = None) -> list[float]:
    """Summed log-probability of each continuation after the context: the context's forward once (a KV cache),
    then every continuation in one padded batch that reads that cache."""
    if not context or any(not c for c in continuations):
        raise ValueError("the context and every continuation need at least one token")
    limit = model.config.max_position_embeddings
    longest = max(len(c) for c in continuations)
    if longest > limit:
        raise DataError(f"a choice is {longest} tokens, longer than the model's {limit} positions; shorten it.")
    context = context[-(limit - longest + 1):]  # cut from the left, as lm-eval does past max_length
    device = model.lm_head.weight.device
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    n, width = len(continuations), longest - 1  # a continuation's last token is predicted, never fed
    with autocast:
        cache = model.new_cache(1, len(context))
        first = model(torch.tensor([context], device=device), cache=cache, last_only=True).logits  # (1, 1, V)
        logits = first.float().expand(n, 1, -1)  # (n, 1, V): predicts each continuation's first token
        if width > 0:
            rows = model.new_cache(n, len(context) + width)
            for layer in range(len(rows.keys)):
                rows.keys[layer][:, :, :len(context)] = cache.keys[layer]  # (n, nkv, Lc, hd) broadcast
                rows.values[layer][:, :, :len(context)] = cache.values[layer]
            rows.pos = len(context)
            fed = torch.zeros((n, width), dtype=torch.long)
            for row, ids in enumerate(continuations):
                fed[row, :len(ids) - 1] = torch.tensor(ids[:-1], dtype=torch.long)
            rest = model(fed.to(device), cache=rows).logits.float()  # (n, width, V)
            logits = torch.cat([logits, rest], dim=1)  # (n, longest, V)
    targets = torch.zeros((n, longest), dtype=torch.long)
    valid = torch.zeros((n, longest), dtype=torch.bool)
    for row, ids in enumerate(continuations):
        targets[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        valid[row, :len(ids)] = True
    targets, valid = targets.to(device), valid.to(device)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n, longest)
    return [float(v) for v in (logp * valid).sum(dim=1)]


def score_questions(model: CausalLM, tokenizer: Any, questions: Sequence[Question], task: str = "",
                    precision: Precision | None = None, limit: int | None = None) -> ChoiceResult:
    """Score each question (the first `limit`) by the log-likelihood of its choices."""
    was_training = model.training
    model.eval()
    scores = []
    try:
        for question in questions[:limit] if limit is not None else questions:
            pairs = [encode_pair(tokenizer, question.context, TARGET_DELIMITER + c) for c in question.choices]
            context = pairs[0][0]  # the same for every choice: it depends on the context alone
            lls = choice_loglikelihoods(model, context, [cont for _, cont in pairs], precision)
            scores.append(QuestionScore(question.id, question.answer, lls, [len(cont) for _, cont in pairs],
                                        [len(c) for c in question.choices],
                                        [len(c.encode("utf-8")) for c in question.choices]))
    finally:
        model.train(was_training)
    return ChoiceResult(task, scores)


def evaluate_file(model: CausalLM, tokenizer: Any, path: str | Path, format: str | None = None,
                  limit: int | None = None, precision: Precision | None = None) -> ChoiceResult:
    """Read a task file (engine.eval.tasks) and score its first `limit` questions; the task is the file's stem."""
    questions = read_questions(path, format=format, limit=limit)
    return score_questions(model, tokenizer, questions, task=Path(path).stem, precision=precision)


def mean_over_tasks(results: Sequence[ChoiceResult]) -> dict[str, float]:
    """The unweighted mean of each metric over the tasks run (each task counts once, whatever its size)."""
    keys = ("acc", "acc_norm", "acc_bytes", "acc_centered")
    if not results:
        return {k: math.nan for k in keys}
    return {k: sum(getattr(r, k) for r in results) / len(results) for k in keys}
