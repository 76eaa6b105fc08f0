"""What a stage reports about its model while it trains: held-out loss and a greedy sample."""

from __future__ import annotations

import torch

from engine.data.blocks import IGNORE_INDEX
from engine.events import EventLog, SampleEvent
from engine.hardware.device import Precision
from engine.model.generate import Sampling, generate
from engine.model.transformer import CausalLM
from engine.train.stage_data import collate


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks, indices, batch_size: int, max_batches: int, precision: Precision) -> float | None:
    """Mean held-out loss over up to max_batches batches (token-weighted within each batch)."""
    if len(indices) == 0:
        return None
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, min(len(indices), batch_size * max_batches), batch_size):
        inputs, targets = collate([blocks[int(i)] for i in indices[start : start + batch_size]])
        inputs, targets = inputs.to(precision.device), targets.to(precision.device)
        with precision.autocast():
            out = model(inputs, targets=targets)
        losses.append(out.loss.float().item())
    model.train(was_training)
    return sum(losses) / len(losses)


def emit_sample(model: CausalLM, blocks, eval_idx, tokenizer, stage: str, step: int, log: EventLog,
                max_new_tokens: int = 32) -> None:
    """A greedy continuation of a held-out sequence's opening, so a watcher sees what the model has learned.
    SFT: the prompt is the sequence up to its first answer token (the question and the assistant header)."""
    inputs, targets = blocks[int(eval_idx[0]) if len(eval_idx) else 0]
    answer_at = (targets != IGNORE_INDEX).nonzero()
    cut = int(answer_at[0]) + 1 if stage == "sft" and len(answer_at) else min(16, len(inputs))
    prompt = inputs[:cut].tolist()
    stops = {tokenizer.eos_token_id} if stage == "sft" else set()
    new = list(generate(model, prompt, Sampling(temperature=0.0, max_new_tokens=max_new_tokens), stops))
    log.emit(SampleEvent(stage=stage, step=step, prompt=tokenizer.decode(prompt), text=tokenizer.decode(new)))


