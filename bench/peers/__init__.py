"""bench/peers: direct, nginx, LiteLLM's proxy and the llmroute sidecar against one nginx backend, with wrk."""
