"""The answer-lengths bench: whether the latency-aware choice holds when an answer's time grows with its length."""
