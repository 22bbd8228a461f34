"""``lmops bench``: load any OpenAI-compatible endpoints and measure what their users see (the engine study)."""
