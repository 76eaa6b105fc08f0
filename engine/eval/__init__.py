"""Evaluation: scoring a model. heldout: greedy exact match on held-out questions; bpb: bits per byte on held-out
text, comparable across tokenizers; tasks + choice: multiple-choice task files in their published formats
(C-Eval, CMMLU, ARC, HellaSwag, PIQA, OpenBookQA, Social IQa, generic) scored by log-likelihood as
lm-evaluation-harness scores them. (The eval stage and command, the report card and the lm-eval agreement
check build on these next: issue 22.)"""
