"""`python -m terrafm_jax.embed ...` (see terrafm_jax/embed/cli.py)."""
from terrafm_jax.embed.cli import run

if __name__ == "__main__":
  run()
