"""bench/faults: the provider-fault catalogue scored for llmroute, LiteLLM and the openai SDK."""
