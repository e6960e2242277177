"""`python -m terrafm_jax.data.prepare`: the same as `terrafm-prepare`."""
from terrafm_jax.data.prepare import cli

if __name__ == "__main__":
  cli.run()
