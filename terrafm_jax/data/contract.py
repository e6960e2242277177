"""The input contract: what the encoder expects, band by band.

The contract is a first-class object (DESIGN.md decision 9). It is written next to prepared data,
into every checkpoint and beside every export, and it is checked whenever data or weights are loaded,
so that a model is never fed bands in another order, unit or normalisation than it was trained on.

Units after harmonisation:
  * S2 (L1C and L2A): DN = reflectance x 10000, with the +1000 offset of processing baseline >= 04.00
    removed (DATA.md 2.6); 0 is nodata. B10 (cirrus) is dropped for L1C.
  * S1 RTC: gamma0 backscatter in dB, 10*log10(max(linear, 1e-10)); Major-TOM's nodata -32768 is
    masked before the log.
Normalisation: (value - mean) / std per band, in the units above.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

# Canonical modality order: index m of every (B, 3) modality mask refers to MODALITIES[m].
MODALITIES: tuple[str, ...] = ("s1", "s2_l1c", "s2_l2a")

S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_BANDS: tuple[str, ...] = ("VV", "VH")

# Native ground sampling distance of each band in metres (Major-TOM stores bands at native GSD).
BAND_GSD_M: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "VV": 10, "VH": 10}


@dataclasses.dataclass(frozen=True)
class ModalityContract:
  """Bands, units and normalisation of one encoder input (one patch-embedding stem)."""
  name: str
  bands: tuple[str, ...]
  units: str
  nodata: float | None
  mean: tuple[float, ...]
  std: tuple[float, ...]
  stats_source: str

  def __post_init__(self):
    n = len(self.bands)
    if len(self.mean) != n or len(self.std) != n:
      raise ValueError(f"modality {self.name!r}: {n} bands but {len(self.mean)} means and "
                       f"{len(self.std)} stds")
    if any(s <= 0 for s in self.std):
      raise ValueError(f"modality {self.name!r}: std must be positive, got {self.std}")

  @property
  def num_channels(self) -> int:
    return len(self.bands)

  def normalize(self, x: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """(x - mean) / std per band, float32. `x` holds the bands in contract order."""
    if x.shape[channel_axis] != self.num_channels:
      raise ValueError(f"modality {self.name!r} expects {self.num_channels} bands "
                       f"{self.bands}, got an array with {x.shape[channel_axis]} on axis "
                       f"{channel_axis} (shape {x.shape})")
    shape = [1] * x.ndim
    shape[channel_axis] = self.num_channels
    mean = np.asarray(self.mean, np.float32).reshape(shape)
    std = np.asarray(self.std, np.float32).reshape(shape)
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class InputContract:
  """The full contract: one ModalityContract per stem, keyed by MODALITIES."""
  modalities: tuple[ModalityContract, ...]
  version: int = 1

  def __post_init__(self):
    names = tuple(m.name for m in self.modalities)
    if names != MODALITIES:
      raise ValueError(f"contract modalities must be {MODALITIES} in this order, got {names}")

  def __getitem__(self, name: str) -> ModalityContract:
    for m in self.modalities:
      if m.name == name:
        return m
    raise KeyError(f"unknown modality {name!r}; expected one of {MODALITIES}")

  @property
  def num_channels(self) -> dict[str, int]:
    return {m.name: m.num_channels for m in self.modalities}

  def to_dict(self) -> dict[str, Any]:
    return {"version": self.version,
            "modalities": {m.name: {"bands": list(m.bands), "units": m.units, "nodata": m.nodata,
                                    "mean": list(m.mean), "std": list(m.std),
                                    "stats_source": m.stats_source}
                           for m in self.modalities}}

  def to_json(self, path: str | None = None) -> str:
    text = json.dumps(self.to_dict(), indent=2)
    if path is not None:
      with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return text

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "contract") -> "InputContract":
    try:
      mods = d["modalities"]
      return cls(
          modalities=tuple(
              ModalityContract(name=name, bands=tuple(mods[name]["bands"]),
                               units=str(mods[name]["units"]), nodata=mods[name]["nodata"],
                               mean=tuple(float(v) for v in mods[name]["mean"]),
                               std=tuple(float(v) for v in mods[name]["std"]),
                               stats_source=str(mods[name]["stats_source"]))
              for name in MODALITIES),
          version=int(d.get("version", 1)))
    except KeyError as e:
      raise ValueError(f"{where}: missing key {e} in input contract") from None

  @classmethod
  def from_json(cls, path: str) -> "InputContract":
    with open(path, encoding="utf-8") as f:
      return cls.from_dict(json.load(f), where=path)

  def with_stats(self, name: str, mean: Sequence[float], std: Sequence[float],
                 source: str) -> "InputContract":
    """A copy with the statistics of one modality replaced (e.g. recomputed on prepared data)."""
    mods = tuple(dataclasses.replace(m, mean=tuple(map(float, mean)), std=tuple(map(float, std)),
                                     stats_source=source) if m.name == name else m
                 for m in self.modalities)
    return dataclasses.replace(self, modalities=mods)

  def check_compatible(self, other: "InputContract", what: str = "data",
                       check_stats: bool = True, rtol: float = 1e-6) -> None:
    """Raise ValueError naming the first difference between two contracts."""
    for mine, theirs in zip(self.modalities, other.modalities):
      if mine.bands != theirs.bands:
        raise ValueError(f"{what}: modality {mine.name!r} band order {theirs.bands} differs from "
                         f"the expected {mine.bands}")
      if mine.units != theirs.units:
        raise ValueError(f"{what}: modality {mine.name!r} units {theirs.units!r} differ from the "
                         f"expected {mine.units!r}")
      if check_stats and not (np.allclose(mine.mean, theirs.mean, rtol=rtol)
                              and np.allclose(mine.std, theirs.std, rtol=rtol)):
        raise ValueError(f"{what}: modality {mine.name!r} normalisation statistics differ from "
                         f"the expected ones ({theirs.stats_source!r} vs {mine.stats_source!r})")


S2_UNITS = "DN = reflectance x 10000, +1000 offset removed (baseline >= 04.00)"
S1_UNITS = "dB = 10*log10(gamma0 linear power)"

# SSL4EO-S12 v1.0 statistics (offset-free, so they match harmonised data); L1C drops B10.
_L1C_MEAN_13 = (1605.58, 1390.78, 1314.87, 1363.52, 1549.44, 2091.75, 2371.72, 2299.90, 2560.29,
                830.07, 22.10, 2177.07, 1524.06)
_L1C_STD_13 = (786.79, 850.35, 875.06, 1138.85, 1122.18, 1161.59, 1274.39, 1248.43, 1345.53,
               577.32, 51.15, 1336.10, 1136.54)
_B10 = 10

DEFAULT_CONTRACT = InputContract(modalities=(
    ModalityContract(
        name="s1", bands=S1_BANDS, units=S1_UNITS, nodata=-32768.0,
        mean=(-10.93, -17.329), std=(4.391, 4.459),
        stats_source="TerraMind v1 untok_sen1rtc@224 (Major-TOM S1RTC in dB), DATA.md 6"),
    ModalityContract(
        name="s2_l1c", bands=S2_BANDS, units=S2_UNITS, nodata=0.0,
        mean=tuple(v for i, v in enumerate(_L1C_MEAN_13) if i != _B10),
        std=tuple(v for i, v in enumerate(_L1C_STD_13) if i != _B10),
        stats_source="SSL4EO-S12 v1.0 S2C_MEAN/STD without B10, DATA.md 6"),
    ModalityContract(
        name="s2_l2a", bands=S2_BANDS, units=S2_UNITS, nodata=0.0,
        mean=(752.40, 884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65,
              2645.52, 2368.51, 1805.07),
        std=(1108.03, 1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31,
             1582.28, 1455.52, 1343.48),
        stats_source="SSL4EO-S12 v1.0 S2A_MEAN/STD, DATA.md 6"),
))
