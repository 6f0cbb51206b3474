"""Voxa sfu (arrives with its own issue)."""
