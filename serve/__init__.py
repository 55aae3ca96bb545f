"""edgekit serve: an OpenAI-compatible HTTP server over the runtime (torch-free)."""
