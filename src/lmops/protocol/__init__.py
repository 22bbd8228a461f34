"""Pydantic models of the OpenAI wire format, the contract everywhere in lmops."""
