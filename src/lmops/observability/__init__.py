"""Logging, metrics and request ids."""
