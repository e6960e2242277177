"""Errors for bad input data, each naming where the problem is (file, row group, column)."""
from __future__ import annotations


class BadInputError(ValueError):
  """Input data that cannot be prepared without writing something wrong.

  The message always names the file and, where known, the parquet row group and column, so that
  one bad sample among millions can be found (and re-downloaded or excluded). `kind` names the
  defect (e.g. `not_geotiff`, `wrong_crs`, `wrong_size`; majortom/bands.py lists the band checks).
  The per-modality defects of a tile (`all_nodata`, `nan`) use the same class but are not raised
  out of prepare: they mark that modality unavailable in that tile (rule in majortom/__init__.py).
  """

  def __init__(self, reason: str, *, file: str | None = None, row_group: int | None = None,
               column: str | None = None, grid_cell: str | None = None, kind: str = "bad_input"):
    self.reason = reason
    self.file = file
    self.row_group = row_group
    self.column = column
    self.grid_cell = grid_cell
    self.kind = kind
    super().__init__(self.describe())

  def describe(self) -> str:
    where = []
    if self.file is not None:
      where.append(f"file {self.file}")
    if self.row_group is not None:
      where.append(f"row group {self.row_group}")
    if self.column is not None:
      where.append(f"column {self.column!r}")
    if self.grid_cell is not None:
      where.append(f"grid cell {self.grid_cell}")
    return f"{self.reason} ({', '.join(where)})" if where else self.reason

  def to_record(self) -> dict[str, object]:
    """A JSON-able record for the prepare report."""
    return {"kind": self.kind, "reason": self.reason, "file": self.file,
            "row_group": self.row_group, "column": self.column, "grid_cell": self.grid_cell}
