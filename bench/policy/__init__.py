"""LLMPolicy share bench: python -m bench.policy (see __main__.py)."""
