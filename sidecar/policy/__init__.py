"""LLMPolicy enforcement in the sidecar: a ledger of quota grants, reservations that settle on real usage,
and the admission filter that refuses, downgrades or observes before a request is dispatched."""
