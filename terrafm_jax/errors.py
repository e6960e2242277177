"""Errors shared across the package's layers (issue #24: imports go in one direction).

This module imports nothing from terrafm_jax, so any layer may import it.
"""
from __future__ import annotations


# `train.cli` reports these as "invalid configuration" (exit code 2); data and runtime errors
# differ. Raised for config values that cannot work, naming the offending field.
class ConfigError(ValueError):
  pass
