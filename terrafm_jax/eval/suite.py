"""The paper's tables (METHOD.md 7) filled with our rows, the published TerraFM-B row beside them.

Three tables, as the paper lays them out: GEO-Bench k-NN (100 % / 1 % of the training set),
GEO-Bench fine-tuned classification / linear-probe segmentation, and Copernicus-Bench. A cell we
did not run (no data folder given) shows "-".
"""
from __future__ import annotations

from typing import Sequence

from terrafm_jax.eval.results import Row
from terrafm_jax.eval.tasks import TASKS

_GB_CLS = ("m-eurosat", "m-bigearthnet", "m-so2sat", "m-brick-kiln")
_GB_SEG = ("m-cashew-plantation", "m-SA-crop-type")
_CB = ("cloud_s2", "eurosat_s1", "eurosat_s2", "bigearthnet_s1", "bigearthnet_s2", "dfc2020_s1",
       "dfc2020_s2", "lcz_s2")


def _cell(value: float | None) -> str:
  return "-" if value is None else f"{value:.1f}"


def _table(title: str, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
  lines = [f"**{title}**", "", "| model | " + " | ".join(columns) + " |",
           "|---|" + "---|" * len(columns)]
  lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
  return "\n".join(lines)


def paper_tables(rows: Sequence[Row], label: str = "ours") -> str:
  got = {(r.task, r.protocol, r.partition): r.value for r in rows}

  def ours(task, protocol, partition="default"):
    return got.get((task, protocol, partition))

  def pub(task, protocol, partition="default"):
    return TASKS[task].published.get(f"{protocol}@{partition}")

  def pair(fn, task):
    return f"{_cell(fn(task, 'knn'))} / {_cell(fn(task, 'knn', '0.01x_train'))}"

  knn = _table("GEO-Bench k-NN (100 % / 1 % train)",
               _GB_CLS, [(label, [pair(ours, f"geobench/{t}") for t in _GB_CLS]),
                         ("TerraFM-B (published)", [pair(pub, f"geobench/{t}") for t in _GB_CLS])])
  sup_cols = _GB_CLS + tuple(f"{t} (mIoU)" for t in _GB_SEG)
  sup = [(name, [_cell(fn(f"geobench/{t}", "finetune")) for t in _GB_CLS]
          + [_cell(fn(f"geobench/{t}", "seg_linear")) for t in _GB_SEG])
         for name, fn in ((label, ours), ("TerraFM-B (published)", pub))]
  sup_t = _table("GEO-Bench fine-tuned classification / linear-probe segmentation", sup_cols, sup)
  cb_rows = []
  for name, fn in ((label, ours), ("TerraFM-B (published)", pub)):
    cells = []
    for t in _CB:
      task = TASKS[f"copernicus/{t}"]
      cells.append(_cell(fn(task.name, task.protocols[0])))
    cb_rows.append((name, cells))
  cb = _table("Copernicus-Bench (frozen encoder)", _CB, cb_rows)
  return "\n\n".join([knn, sup_t, cb])
