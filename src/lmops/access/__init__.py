"""Access and billing: principals, API keys, limits, budgets (no HTTP here)."""
