"""terrafm-jax: TerraFM multi-sensor foundation model pretraining in JAX/Flax."""
__version__ = "0.1.0"
