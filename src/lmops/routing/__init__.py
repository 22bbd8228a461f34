"""Model registry, replica balancing, health checks and retries."""
