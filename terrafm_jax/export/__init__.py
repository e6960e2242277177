"""Conversion between Flax parameters and the released PyTorch `terrafm.py` layout."""
