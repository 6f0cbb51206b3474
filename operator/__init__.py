"""Voxa operator (arrives with its own issue)."""
