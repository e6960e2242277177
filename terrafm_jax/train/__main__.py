"""`python -m terrafm_jax.train` == `terrafm-train`."""
from terrafm_jax.train.cli import run

if __name__ == "__main__":
  run()
