"""TerraFM-L/16 pretraining, the paper recipe (METHOD.md 6): 200 epochs, global batch 2048.

345 M parameters: FSDP over all devices (parameters, gradients and Adam moments sharded) and
rematerialised blocks. `:arg` picks another size, e.g. configs/terrafm_l.py:B/16.
"""
from terrafm_jax.train import default_config


def get_config(arg: str | None = None):
  c = default_config.get_base_config(arg or "L/16")
  c.global_batch_size = 2048
  c.num_epochs = 200
  c.model.drop_path_rate = 0.1
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.model.scan_layers = True                 # one scanned block: a faster compile (README table)
  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  c.checkpoint.every_steps = 2000
  c.log_every_steps = 100
  return c
