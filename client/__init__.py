"""Voxa client (arrives with its own issue)."""
