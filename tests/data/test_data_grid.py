"""Major-TOM grid: published cell ids and sample centres (DATA.md 2.4)."""
import pytest

from terrafm_jax.data import grid


@pytest.mark.parametrize("name", ["454U_120R", "455U_120R", "455U_119R", "922D_249L",
                                  "922D_245L", "922D_244L", "922D_243L", "922D_242L"])
def test_round_trip_published_ids(name):
  row, col = grid.parse_cell(name)
  assert grid.cell_name(row, col) == name
  lat, lon = grid.cell_bottom_left(row, col)
  # the cell's centre maps back to the cell
  assert grid.latlon_to_cell(lat + grid.DLAT / 2, lon + 180.0 / grid.n_cols(row)) == name


@pytest.mark.parametrize("lat,lon,name", [
    (-25.32, -48.11, "282D_485L"), (-3.40, 34.07, "38D_378R"), (-38.83, -72.48, "433D_629L"),
    (54.78, -83.95, "609U_541L"), (57.23, 9.84, "637U_59R"),
    (48.222307, 13.720948, "536U_101R")])
def test_sample_centres_fall_in_named_cells(lat, lon, name):
  assert grid.latlon_to_cell(lat, lon) == name


def test_rows_and_edges():
  assert grid.N_ROWS == 2004
  assert grid.latlon_to_cell(grid.DLAT * 3, 0.5).startswith("2U")   # on an edge: lower row
  assert grid.utm_epsg(48.2, 13.7) == 32633
  assert grid.utm_epsg(-25.3, -48.1) == 32722
  assert grid.utm_epsg(60.0, 5.0) == 32632        # Norway exception
