"""`python -m terrafm_jax.eval ...` (see terrafm_jax/eval/cli.py)."""
from terrafm_jax.eval.cli import run

if __name__ == "__main__":
  run()
