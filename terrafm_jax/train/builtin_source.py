"""Where the built-in data set of the smoke configs lives, and preparing it once for all processes
(`config.data.builtin`, data/builtin.py): synthetic Major-TOM cells plus, when found, the real
unlabelled scenes of the eo_samples folder (`data.builtin.real_scenes`).
"""
from __future__ import annotations

import fcntl
import os

import jax
import ml_collections
from absl import logging

from terrafm_jax.data import builtin
from terrafm_jax.data import real_scenes
from terrafm_jax.train import console
from terrafm_jax.train import workdir as workdir_lib


def builtin_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Local folder of the built-in synthetic set. It is written with local file APIs, so a remote
  workdir keeps it in a per-user cache (it is deterministic from its parameters)."""
  if config.data.builtin.root:
    root = config.data.builtin.root
  elif not workdir_lib.is_remote(workdir):
    root = os.path.join(str(workdir_lib.resolve(workdir)), "builtin_data")
  else:
    root = os.path.join(os.path.expanduser("~"), ".cache", "terrafm_jax", "builtin_data")
  if workdir_lib.is_remote(root):
    raise ValueError(f"config.data.builtin.root={root!r}: the built-in set is written to a local "
                     "(or shared, mounted) folder, not a URI")
  return root


def real_root(config: ml_collections.ConfigDict) -> str:
  """The eo_samples folder whose real scenes join the built-in set, or "" for none.

  `data.builtin.real_scenes`: "" none; "auto" the eo_samples folder beside the checkout, skipped
  with a warning where it is absent; any other value a folder that must exist.
  """
  choice = config.data.builtin.real_scenes
  if not choice:
    return ""
  if choice == "auto":
    root = real_scenes.eo_samples_root()
    if not os.path.isdir(os.path.join(root, "terramind_majortom")):
      logging.warning("built-in set: no real scenes (%s not found); synthetic cells only", root)
      return ""
    return root
  if not os.path.isdir(choice):
    raise FileNotFoundError(f"config.data.builtin.real_scenes={choice!r}: no such folder")
  return choice


def ensure_builtin(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Prepare the built-in set once: process 0 first (the others wait at a barrier), then every
  other process opens it, building its own copy only if its host does not share the folder. A
  file lock serialises processes of one host."""
  b = config.data.builtin
  root = builtin_root(config, workdir)
  os.makedirs(root, exist_ok=True)

  def build():
    with open(os.path.join(root, ".lock"), "w", encoding="utf-8") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        return builtin.ensure_builtin_dataset(root, num_cells=b.num_cells,
                                                cell_size=b.cell_size, tile_size=b.tile_size,
                                                seed=b.seed, real_root=real_root(config),
                                                real_stride=b.real_stride)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)

  console.say(f"built-in synthetic Major-TOM set ({b.num_cells} cells of {b.cell_size} px, "
              f"{b.tile_size} px tiles): written and prepared once under {root}")
  if jax.process_count() == 1:
    return build()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  path = build() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("terrafm_builtin_data_ready")
  return path if path is not None else build()
