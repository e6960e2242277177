"""Shared fixtures of the data tests: a small synthetic Major-TOM set and its prepared shards."""
from __future__ import annotations

import os

import pytest

from terrafm_jax.data import prepare as prepare_lib
from terrafm_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EO_SAMPLES = os.path.join(REPO, "..", "shared", "eo_samples")

SYN_CFG = synthetic.SyntheticConfig(num_cells=12, cell_size=64, tile_size=32, seed=3,
                                    rows_per_part=5, p_n9999=0.4)


@pytest.fixture(scope="session")
def eo_samples() -> str:
  if not os.path.isdir(EO_SAMPLES):
    pytest.skip(f"real EO samples not found at {os.path.normpath(EO_SAMPLES)} "
                "(expected <repo>/../shared/eo_samples)")
  return EO_SAMPLES


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("synthetic_majortom"))
  synthetic.write_synthetic_majortom(root, SYN_CFG)
  return root


@pytest.fixture(scope="session")
def prepared(synthetic_raw, tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("prepared"))
  return prepare_lib.prepare(
      synthetic_raw, out,
      prepare_lib.PrepareOptions(tile_size=32, cells_per_shard=4, num_workers=1,
                                 landcover=os.path.join(synthetic_raw, "worldcover.parquet")))
