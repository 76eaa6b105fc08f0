"""Data: reading jsonl files, the chat schema and its loss masks, the tokenizer, the token cache, training blocks."""
