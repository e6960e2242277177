"""Reader for Major-TOM Core-S1RTC / Core-S2L1C / Core-S2L2A as published (DATA.md 2.1, 2.2).

    folder = MajorTomFolder("/data/Core-S2L2A", "s2_l2a")
    cell = load_cell({"s2_l2a": folder.refs["454U_120R"], ...})   # harmonised 10 m arrays

One concern per module, all re-exported here:
  index  folder index (metadata.parquet or a scan of images/), row-group reads
  bands  band decoding (GeoTIFF only) and per-band validation against the product's grid
  cell   cell assembly: every modality on the cell's common 10 m grid

What is an error and what degrades (the rule prepare applies):
  * Hard input errors: the bytes are not what Major-TOM promises, so any pixel written from them
    could be wrong. Unreadable parquet, missing column, row of another grid cell, empty or corrupt
    band bytes, bytes that are not a GeoTIFF, a multi-band GeoTIFF, a band in another CRS or off
    the product's grid, a band of the wrong size, modalities that cannot be brought onto one grid.
    They raise `BadInputError` naming file, row group and column (`kind` says which), which stops
    prepare by default; with `on_error="skip"` the cell is skipped and counted.
  * Per-modality data defects: the bytes are valid but one modality of a tile holds no usable
    pixel: all pixels nodata (an S1 swath edge, an S2 product edge) or NaN pixels in S1 (not the
    documented nodata value). They are not errors: that modality is marked unavailable for that
    tile (record `available` False, array zero-filled as for an absent modality) and counted per
    kind and modality in the report; the tile keeps its other modalities. The tile is dropped (and
    counted) only when no modality is left, or when a modality required by `require` is gone.
"""
from __future__ import annotations

from terrafm_jax.data.majortom.bands import (BAND_COLUMNS, COLUMN_GSD_M, REFERENCE_COLUMN,
                                             check_cell_bands, check_georeference, check_sizes,
                                             decode_geotiff, read_product)
from terrafm_jax.data.majortom.cell import (MIN_FOOTPRINT_OVERLAP, CellData, ModalityData,
                                            cell_from_rasters, load_cell)
from terrafm_jax.data.majortom.index import (MODALITY_FOLDERS, MajorTomFolder, ProductRef,
                                             cached_parquet, find_modality_folders,
                                             open_parquet, read_row_group)

__all__ = [
    "BAND_COLUMNS", "COLUMN_GSD_M", "REFERENCE_COLUMN", "MIN_FOOTPRINT_OVERLAP", "MODALITY_FOLDERS",
    "CellData", "ModalityData", "MajorTomFolder", "ProductRef", "cached_parquet",
    "cell_from_rasters", "check_cell_bands", "check_georeference", "check_sizes", "decode_geotiff",
    "find_modality_folders", "load_cell", "open_parquet", "read_product", "read_row_group",
]
