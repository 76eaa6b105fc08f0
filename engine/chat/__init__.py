"""Chat: a conversation with a checkpoint, and reading a streamed reply (reasoning, answer, tool calls)."""
