"""Helpers for testing pipelines offline: tiny, locally built models (random weights)."""
