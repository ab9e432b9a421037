"""Helpers for testing pipelines offline: tiny, locally built models (random weights) and a local
stand-in of the Hugging Face Hub endpoints (hub_server.HubServer)."""
