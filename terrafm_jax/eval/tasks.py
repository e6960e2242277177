"""The benchmark tasks TerraFM reports, as data: reader, stems, protocols and published numbers.

Each task names its reader module (GEO-Bench or Copernicus-Bench), the band table that feeds the
stems (eval/bands.py: which stem, which source group, which contract bands are zero-filled or
which source bands dropped; METHOD.md 9 item 9: the L2A stem for L2A data, the L1C stem otherwise,
B10 dropped, missing bands zero-filled after normalisation), the protocols of the paper's tables
with their metric, and the published TerraFM-B numbers (METHOD.md 7) printed beside ours.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Mapping

from terrafm_jax.eval.bands import StemMapping
from terrafm_jax.eval.dataset import EvalSplit

PROTOCOLS = ("knn", "linear", "finetune", "seg_linear", "seg_upernet")
CLASSIFICATION_PROTOCOLS = ("knn", "linear", "finetune")
SEGMENTATION_PROTOCOLS = ("seg_linear", "seg_upernet")

_L1C_13 = (StemMapping("s2_l1c", "s2", drop=("B10",)),)
_L2A_12 = (StemMapping("s2_l2a", "s2"),)
_L1C_10 = (StemMapping("s2_l1c", "s2", fill=("B01", "B09")),)
_S1 = (StemMapping("s1", "s1"),)


@dataclasses.dataclass(frozen=True)
class Task:
  name: str                              # "<benchmark>/<dataset>"
  reader: str                            # module in terrafm_jax.eval.readers with open_split(...)
  dataset: str                           # the dataset's own name, passed to the reader
  stems: tuple[StemMapping, ...]         # the band table
  protocols: tuple[str, ...]             # what the paper reports for this task
  metric: str                            # accuracy | micro_f1 | map | miou
  # Published TerraFM-B numbers (METHOD.md 7), keyed "<protocol>" or "<protocol>@<partition>".
  published: Mapping[str, float] = dataclasses.field(default_factory=dict)
  input_size: int | None = None          # None: native size rounded up to the patch size

  @property
  def benchmark(self) -> str:
    return self.name.split("/")[0]

  def open(self, root: str, split: str, partition: str = "default") -> EvalSplit:
    module = importlib.import_module(f"terrafm_jax.eval.readers.{self.reader}")
    return module.open_split(root, self.dataset, split, partition)


def _gb(dataset, stems, protocols, metric, published, input_size=None) -> Task:
  return Task(f"geobench/{dataset}", "geobench", dataset, stems, protocols, metric, published,
              input_size)


def _cb(dataset, stems, protocols, metric, published, input_size=None) -> Task:
  return Task(f"copernicus/{dataset}", "copernicus", dataset, stems, protocols, metric, published,
              input_size)


_ALL = (
    # GEO-Bench: kNN on 100 % and 1 % of the training set; fine-tuned classification; linear-probe
    # segmentation (README of mbzuai-oryx/TerraFM, METHOD.md 7).
    _gb("m-eurosat", _L1C_13, ("knn", "finetune"), "accuracy",
        {"knn@default": 94.2, "knn@0.01x_train": 59.3, "finetune@default": 98.1}),
    _gb("m-bigearthnet", _L2A_12, ("knn", "finetune"), "micro_f1",
        {"knn@default": 68.7, "knn@0.01x_train": 49.4, "finetune@default": 72.6}, input_size=128),
    _gb("m-so2sat", _L1C_10, ("knn", "finetune"), "accuracy",
        {"knn@default": 55.1, "knn@0.01x_train": 41.6, "finetune@default": 64.9}),
    _gb("m-brick-kiln", _L1C_13, ("knn", "finetune"), "accuracy",
        {"knn@default": 94.5, "knn@0.01x_train": 85.6, "finetune@default": 98.7}),
    # Cashew and SA-crop-type store 12 S2 bands (no B10: L2A products) plus a cloud-probability
    # band that the reader leaves out, so they take the L2A stem.
    _gb("m-cashew-plantation", _L2A_12, ("seg_linear",), "miou", {"seg_linear@default": 34.1}),
    _gb("m-SA-crop-type", _L2A_12, ("seg_linear",), "miou", {"seg_linear@default": 33.0}),
    # Copernicus-Bench: frozen encoder, linear classifier / UPerNet head ([CB], METHOD.md 7).
    _cb("cloud_s2", _L1C_13, ("seg_upernet",), "miou", {"seg_upernet@default": 67.9}),
    _cb("eurosat_s1", _S1, ("linear",), "accuracy", {"linear@default": 87.8}),
    _cb("eurosat_s2", _L1C_13, ("linear",), "accuracy", {"linear@default": 99.1}),
    _cb("bigearthnet_s1", _S1, ("linear",), "map", {"linear@default": 76.9}, input_size=128),
    _cb("bigearthnet_s2", _L2A_12, ("linear",), "map", {"linear@default": 84.4}, input_size=128),
    _cb("dfc2020_s1", _S1, ("seg_upernet",), "miou", {"seg_upernet@default": 55.4}),
    _cb("dfc2020_s2", _L1C_13, ("seg_upernet",), "miou", {"seg_upernet@default": 63.8}),
    _cb("lcz_s2", _L1C_10, ("linear",), "accuracy", {"linear@default": 87.0}),
    # Real labelled pixels in EuroSAT's own file format (eval/readers/eurosat.py): 13 bands with B8A last,
    # mapped by name onto the L1C stem, B10 dropped. The real-pixel learning check reads it too.
    Task("eurosat/ms", "eurosat", "ms", _L1C_13, ("knn", "linear"), "accuracy"),
    # Real pixels, no published numbers: 32 px patches of the five eo_samples scenes, labelled by
    # their majority land-cover class (eval/readers/eosamples.py), one task per stem.
    Task("eosamples/lulc-s1", "eosamples", "lulc", (StemMapping("s1", "s1"),),
         ("knn", "linear"), "accuracy"),
    Task("eosamples/lulc-s2_l1c", "eosamples", "lulc",
         (StemMapping("s2_l1c", "s2l1c", drop=("B10",)),), ("knn", "linear"), "accuracy"),
    Task("eosamples/lulc-s2_l2a", "eosamples", "lulc", (StemMapping("s2_l2a", "s2l2a"),),
         ("knn", "linear"), "accuracy"),
    Task("eosamples/lulcseg-s2_l2a", "eosamples", "lulc-seg", (StemMapping("s2_l2a", "s2l2a"),),
         ("seg_linear", "seg_upernet"), "miou"),
)

TASKS: dict[str, Task] = {t.name: t for t in _ALL}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def with_stems(task: Task, stems: tuple[StemMapping, ...]) -> Task:
  """The same task fed through another band table (e.g. m-so2sat as S1 + S2 fused input)."""
  return dataclasses.replace(task, stems=stems)
