"""GPT-J 6B causal-LM training on C4 as released (gzipped JSON lines)."""
