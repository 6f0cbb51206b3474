"""The chaos soak's stack and its load (bench/chaos.py)."""
