"""Traces of the sidecar as an OTLP collector receives them: a sample trace drawn as a waterfall, and what
tracing costs (instructions per request, RSS, start-up time)."""
