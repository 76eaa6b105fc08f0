"""Evaluation: scoring a model. heldout: greedy exact match on held-out questions; bpb: bits per byte on held-out
text, comparable across tokenizers. (The eval stage, multiple choice and the report card are next: issue 22.)"""
