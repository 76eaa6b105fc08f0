"""The stages of a run behind one protocol (engine.stages.base); the built-in ones are registered here.

    tokenizer   engine.stages.tokenizer   train or adopt the BPE tokenizer
    pretrain    engine.stages.training    next-token pretraining on packed text
    sft         engine.stages.training    supervised fine-tuning on conversations (loss on the assistant's turns)

Importing this package is cheap (torch is imported when a stage runs), so the CLI's preflight uses it.
"""

from engine.stages.base import Stage, StageContext, StageResult, register, stage_named, unregister
from engine.stages.tokenizer import TokenizerStage
from engine.stages.training import TrainingStage

register(TokenizerStage())
register(TrainingStage("pretrain"))
register(TrainingStage("sft"))

__all__ = ["Stage", "StageContext", "StageResult", "register", "stage_named", "unregister"]
