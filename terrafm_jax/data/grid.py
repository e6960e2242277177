"""The Major-TOM 10 km grid (DATA.md 2.4): cell names <-> latitude / longitude, UTM zone."""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6378.137
SPACING_KM = 10.0
N_ROWS = math.ceil(math.pi * EARTH_RADIUS_KM / SPACING_KM)  # 2004
DLAT = 180.0 / N_ROWS


def n_cols(row: int) -> int:
  """Number of columns of signed row `row` (uses the row's bottom latitude)."""
  lat = row * DLAT
  return math.ceil(2 * math.pi * EARTH_RADIUS_KM * math.cos(math.radians(lat)) / SPACING_KM)


def row_name(row: int) -> str:
  return f"{row}U" if row >= 0 else f"{-row}D"


def col_name(col: int) -> str:
  return f"{col}R" if col >= 0 else f"{-col}L"


def cell_name(row: int, col: int) -> str:
  return f"{row_name(row)}_{col_name(col)}"


def parse_cell(name: str) -> tuple[int, int]:
  """'454U_120R' -> (454, 120); '922D_249L' -> (-922, -249)."""
  r, c = name.split("_")
  row = int(r[:-1]) * (1 if r[-1] == "U" else -1)
  col = int(c[:-1]) * (1 if c[-1] == "R" else -1)
  return row, col


def cell_bottom_left(row: int, col: int) -> tuple[float, float]:
  """(lat, lon) of the bottom-left corner of a cell."""
  return row * DLAT, col * 360.0 / n_cols(row)


def latlon_to_cell(lat: float, lon: float) -> str:
  """Cell containing a point; a point exactly on an edge belongs to the lower row / column."""
  row = int(np.searchsorted(np.arange(-N_ROWS, N_ROWS + 1) * DLAT, lat)) - 1 - N_ROWS
  nc = n_cols(row)
  dlon = 360.0 / nc
  col = int(np.searchsorted(np.arange(-nc, nc + 1) * dlon, lon)) - 1 - nc
  return cell_name(row, col)


def utm_epsg(lat: float, lon: float) -> int:
  """UTM EPSG code of a point, with the Norway and Svalbard exceptions."""
  zone = int((lon + 180) // 6) + 1
  if 56 <= lat < 64 and 3 <= lon < 12:
    zone = 32
  if 72 <= lat < 84:
    for lo, hi, z in ((0, 9, 31), (9, 21, 33), (21, 33, 35), (33, 42, 37)):
      if lo <= lon < hi:
        zone = z
  zone = min(max(zone, 1), 60)
  return (32600 if lat >= 0 else 32700) + zone
