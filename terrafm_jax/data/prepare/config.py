"""The config of `python -m terrafm_jax.data.prepare` (its default `--config`).

Every field of `PrepareOptions` (prepare/options.py, where the defaults are written) plus the two
folders and the Beam options, overridden as `--config.<field>=value`:

  python -m terrafm_jax.data.prepare --config.majortom_dir=/data/majortom \
      --config.out_dir=/data/prepared --config.on_error=skip --config.num_workers=8
"""
from terrafm_jax import config_schema
from terrafm_jax.data.prepare.options import PrepareOptions

REQUIRED = ("majortom_dir", "out_dir")


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f"the prepare config has no variant {arg!r}")
  return config_schema.schema(
      PrepareOptions, majortom_dir=str, out_dir=str,
      # comma-separated Beam options with runner=beam, e.g. "--runner=DirectRunner"
      beam_pipeline_options="")
