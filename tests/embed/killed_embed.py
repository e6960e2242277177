"""Test-only entry: the embed command line, killed halfway through writing a part.

  python tests/embed/killed_embed.py --stop_after_parts=N <every flag of python -m terrafm_jax.embed>

The first N parts are written as usual; the next part's Parquet file gets half of its rows under
its temporary name and the process exits at once (os._exit(75): no cleanup, no atexit), as a kill
would leave it. The production writer (embed/writer.py) knows nothing of this.
"""
from __future__ import annotations

import os

import pyarrow.parquet as pq
from absl import app
from absl import flags

from terrafm_jax.embed import cli
from terrafm_jax.embed import writer as writer_lib

_STOP = flags.DEFINE_integer("stop_after_parts", 1, "Parts written before the kill.")


def _killing_write_table(real):
  written = [0]

  def write_table(table, where, **kwargs):
    if written[0] == _STOP.value:
      w = pq.ParquetWriter(where, table.schema)  # never closed: no footer, as after a kill
      w.write_table(table.slice(0, max(table.num_rows // 2, 1)))
      os._exit(75)  # pylint: disable=protected-access
    written[0] += 1
    return real(table, where, **kwargs)
  return write_table


if __name__ == "__main__":
  writer_lib.pq.write_table = _killing_write_table(pq.write_table)
  app.run(cli.main)
