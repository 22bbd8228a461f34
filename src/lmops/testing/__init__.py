"""Test and benchmark helpers that speak real wire formats."""
