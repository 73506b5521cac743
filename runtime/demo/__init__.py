"""Offline demo assets: a real Qwen2.5 tokenizer and seeded random-weight checkpoints."""
