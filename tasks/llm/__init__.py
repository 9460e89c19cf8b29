"""LLM gateway: OpenAI-compatible client, replica state, balancers, circuit breaking, fallback."""
