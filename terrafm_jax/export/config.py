"""The config of `terrafm-export` (its default `--config`), overridden as `--config.<field>=value`.

  format        released | bundle | import | onnx
  out           output file (released, bundle: .pth / .safetensors; import: .msgpack) or folder
                (onnx)
  workdir | weights | random_init   where the weights come from (one of them):
                released: workdir or random_init; bundle: workdir; import: weights (a released-
                layout .pth / .safetensors); onnx: any of the three
  step          workdir checkpoint step (default: latest)
  variant       random_init: the variant (released default B/16); weights: the expected one
  img_size      the random init's size and the ONNX graphs' fixed input size (224)
  seed          random_init's seed
  teacher_as_student   bundle: also write the teacher under student.*
  pt2           onnx: also write <modality>.pt2, the same graphs as torch.export programs
"""
from terrafm_jax import config_schema
from terrafm_jax.export.options import ExportOptions


def get_config(arg: str | None = None):
  """`:arg` sets the format, e.g. --config=<this file>:onnx."""
  c = config_schema.schema(ExportOptions)
  if arg:
    c.format = arg
  return c
