"""terrafm-jax: TerraFM multi-sensor foundation model pretraining in JAX/Flax.

  import terrafm_jax
  model = terrafm_jax.load("terrafm_b.pth")        # a workdir, a released-layout file, random:B/16
  out = model.encode(s2_dn, modality="s2_l2a")     # CLS, patch tokens, intermediate layers
"""
__version__ = "0.1.0"
__all__ = ["load", "TerraFM"]


def __getattr__(name):  # lazy: `import terrafm_jax` stays cheap (no jax import)
  if name in __all__:
    from terrafm_jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'terrafm_jax' has no attribute {name!r}")
