"""Evaluation configs: `python -m terrafm_jax.eval --config=configs/eval.py:<arg>`.

  (no arg)   one task x protocol, chosen with --task / --protocol
  paper      every task x protocol of the paper's tables whose data folder is given
  eosamples  the real-pixel sanity check on ../shared/eo_samples
  tiny       protocols shrunk for CPU tests and in-loop evaluation
The schema and its defaults: terrafm_jax/eval/config.py.
"""
from terrafm_jax.eval.config import get_eval_config


def get_config(arg: str | None = None):
  return get_eval_config(arg)
