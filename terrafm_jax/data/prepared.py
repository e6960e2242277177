"""Opening a prepared dataset: find it under the folder the user gave, check it is complete and
that its bands and units match, and read its tile index and contract (`PreparedData`).

The prepare stage (data/prepare/) writes it; the streaming pipeline (data/pipeline.py) and the
trainer read it through `load_prepared`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from etils import epath

from terrafm_jax.data import contract as contract_lib


@dataclasses.dataclass
class PreparedData:
  """A prepared dataset: shard files, tile index, contract."""
  dataset_dir: str
  shard_paths: list[str]
  index: Any                       # pandas DataFrame, row i = record i
  contract: contract_lib.InputContract
  tile_size: int

  @property
  def num_records(self) -> int:
    return len(self.index)

  def hist(self) -> np.ndarray:
    from terrafm_jax.data import landcover  # pylint: disable=g-import-not-at-top
    return self.index[list(landcover.HIST_COLUMNS)].to_numpy(np.float64)

  def strata(self) -> np.ndarray | None:
    if "climate" not in self.index or "region" not in self.index:
      return None
    s = self.index["climate"].astype(str) + "|" + self.index["region"].astype(str)
    return None if (s == "|").all() else s.to_numpy()


_DATASET_SEARCH_DEPTH = 4  # levels below data_dir searched for dataset_info.json


def find_dataset_dir(data_dir: str) -> str:
  """The prepared dataset at `data_dir` or in the one folder below it (up to 4 levels) that has
  a dataset_info.json; several at the shallowest level that has any is an error."""
  root = epath.Path(data_dir)
  if not root.exists():
    raise FileNotFoundError(f"{data_dir}: no such prepared data directory")
  if (root / "dataset_info.json").exists():
    return str(root)
  # A parent folder, e.g. prepare's output root (<root>/majortom_tiles/tile534/1.0.0). Non-recursive
  # globs level by level: epath refuses `**` (on gs:// it could list a whole bucket).
  found = []
  for depth in range(1, _DATASET_SEARCH_DEPTH + 1):
    found = sorted(str(p.parent) for p in root.glob("/".join(["*"] * depth + ["dataset_info.json"])))
    if found:
      break
  if len(found) != 1:
    raise FileNotFoundError(f"{data_dir}: expected one prepared dataset (dataset_info.json) "
                            f"within {_DATASET_SEARCH_DEPTH} folder levels, found {len(found)}: "
                            f"{found[:5]}; pass the dataset's own folder")
  return found[0]


def load_prepared(data_dir: str,
                  contract: contract_lib.InputContract | None = None) -> PreparedData:
  """Open a prepared dataset; check `contract` (bands and units) against its contract.json.

  Metadata (index, contract, TFDS info) is read through epath; the ArrayRecord shards are read by
  file descriptor, so they must be on a mounted filesystem (local disk, NFS, gcsfuse for GCS).
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  d = epath.Path(find_dataset_dir(data_dir))
  for name in ("index.parquet", "contract.json", "features.json"):
    if not (d / name).exists():
      raise FileNotFoundError(f"{d} lacks {name}: not a complete terrafm_jax prepared dataset")
  prepared = contract_lib.InputContract.from_dict(json.loads((d / "contract.json").read_text()),
                                                  where=str(d / "contract.json"))
  # Order and units must match; the statistics used on the device are the caller's.
  contract_lib.DEFAULT_CONTRACT.check_compatible(prepared, what=str(d), check_stats=False)
  if contract is not None:
    contract.check_compatible(prepared, what=str(d), check_stats=False)
  info = json.loads((d / "dataset_info.json").read_text())
  split = [s for s in info["splits"] if s["name"] == "train"][0]
  n = len(split["shardLengths"])
  name = info["name"]
  paths = [str(d / f"{name}-train.array_record-{i:05d}-of-{n:05d}") for i in range(n)]
  if "://" in str(d):
    raise ValueError(f"{d}: ArrayRecord shards are read from a mounted filesystem; mount the "
                     "bucket (e.g. gcsfuse) and pass the mount path as config.data.data_dir")
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"missing shard files: {missing[:3]}")
  with (d / "index.parquet").open("rb") as f:
    index = pd.read_parquet(f)
  total = sum(int(x) for x in split["shardLengths"])
  if total != len(index):
    raise ValueError(f"{d}: index has {len(index)} rows but the shards hold {total} records")
  features = json.loads((d / "features.json").read_text())
  shape = features["featuresDict"]["features"]["s2_l2a"]["tensor"]["shape"]["dimensions"]
  return PreparedData(str(d), paths, index, contract or prepared, int(shape[0]))
