"""`python -m terrafm_jax.export` == `terrafm-export`."""
from terrafm_jax.export.cli import run

if __name__ == "__main__":
  run()
