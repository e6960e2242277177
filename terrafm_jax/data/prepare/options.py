"""Options and work units of the prepare step (see prepare/__init__.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from terrafm_jax.data import contract as contract_lib
from terrafm_jax.data import harmonize
from terrafm_jax.data.majortom.index import ProductRef

DATASET_NAME = "majortom_tiles"
VERSION = "1.0.0"
WATER_ONLY_THRESHOLD = 0.95
MAX_REPORTED_ERRORS = 200
# The TFDS `DatasetInfo.description` of a prepared dataset (dataset_info.json). Its own text, so the
# builder does not import the CLI module for its docstring (issue #24: no import circle).
DATASET_DESCRIPTION = (
    "Major-TOM Core-S1RTC / Core-S2L1C / Core-S2L2A (any subset) cut into co-registered tiles "
    "by terrafm_jax.data.prepare (python -m terrafm_jax.data.prepare; layout in its docstring). "
    "Records: `s1` (T,T,2) float16 dB with NaN nodata, `s2_l1c` / `s2_l2a` (T,T,12) uint16 "
    "harmonised DN (all zeros if absent or unavailable), `available` (3,) bool, `wc_hist` (11,) "
    "float32, `label` int32, `tile_index` int64, `grid_cell` text. Next to the TFDS files: "
    "`index.parquet` (one row per record), `contract.json` (input contract), `band_stats.json`, "
    "`prepare.json`, `report.json`.")


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Options of the prepare step (all have defaults matching TerraFM / DATA.md)."""
  tile_size: int = 534
  cells_per_shard: int = 16
  landcover: str | None = None          # table (parquet/csv) or folder of WorldCover GeoTIFFs
  landcover_step: int = 4               # GeoTIFF mode: histogram on a 4x coarser tile grid
  on_error: str = "error"               # "error" | "skip"
  align: str = "reproject"              # modalities on another grid: "reproject" | "error"
  require: tuple[str, ...] = ()         # modalities a cell must have (TerraFM: all three)
  max_cells: int | None = None
  stats: str = "computed"               # contract statistics: "computed" | "default"
  num_workers: int = 0                  # 0: all CPU cores
  compression: str = "zstd:1"           # ArrayRecord options of the local runner
  offset_threshold: float = harmonize.DETECT_THRESHOLD
  runner: str = "local"                 # "local" | "beam" | "generator"

  def __post_init__(self):
    if self.on_error not in ("error", "skip"):
      raise ValueError(f"on_error must be 'error' or 'skip', got {self.on_error!r}")
    if self.runner not in ("local", "beam", "generator"):
      raise ValueError(f"runner must be local, beam or generator, got {self.runner!r}")
    if self.stats not in ("computed", "default"):
      raise ValueError(f"stats must be 'computed' or 'default', got {self.stats!r}")
    bad = set(self.require) - set(contract_lib.MODALITIES)
    if bad:
      raise ValueError(f"unknown modalities in require: {sorted(bad)}")

  def fingerprint(self) -> str:
    """Hash of what changes the shards' content (not workers / runner)."""
    d = dataclasses.asdict(self)
    for k in ("num_workers", "runner"):
      d.pop(k)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class UnitJob:
  """One work unit = one shard: consecutive cells of the sorted cell list."""
  unit: int
  cells: tuple[tuple[int, str, tuple[ProductRef, ...]], ...]  # (ordinal, cell, refs)
  tile_size: int
  options: PrepareOptions
  parts_dir: str

  @property
  def stem(self) -> str:
    return os.path.join(self.parts_dir, f"unit_{self.unit:05d}")
