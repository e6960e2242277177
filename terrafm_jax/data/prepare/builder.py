"""The TFDS builder `MajorTomTiles` behind `prepare()` (layout and runners: see prepare/__init__.py)."""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from typing import Any

from terrafm_jax.data.prepare.options import (DATASET_DESCRIPTION, DATASET_NAME, VERSION,
                                              PrepareOptions, UnitJob)
from terrafm_jax.data.prepare.outputs import merge_units, write_extras
from terrafm_jax.data.prepare.records import features
from terrafm_jax.data.prepare.runners import beam_unit_examples, run_local
from terrafm_jax.data.prepare.units import plan_units


def _make_builder_classes():
  """Defined lazily so that importing this module does not import TFDS."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class MajorTomTilesConfig(tfds.core.BuilderConfig):
    tile_size: int = 534

  class MajorTomTiles(tfds.core.GeneratorBasedBuilder):
    """Major-TOM Core-S1RTC / S2L1C / S2L2A cut into co-registered tiles (see prepare/__init__.py)."""
    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [MajorTomTilesConfig(name="tile534", tile_size=534)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download any subset of Major-TOM Core-S1RTC, Core-S2L1C, Core-S2L2A "
        "(huggingface.co/Major-TOM) into manual_dir, keeping the metadata.parquet + images/ layout.")

    # TFDS locates a builder's source folder (for checksum files, which a manual-download dataset
    # does not have) through `importlib_resources`, which TFDS does not install; skip it.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return None

    def __init__(self, *, options: PrepareOptions | None = None, parts_dir: str | None = None,
                 **kwargs):
      self._options = options or PrepareOptions()
      self._parts_dir = parts_dir
      self._jobs: list[UnitJob] | None = None
      self._plan: dict[str, Any] = {}
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=DATASET_DESCRIPTION,
          features=features(self.builder_config.tile_size),
          homepage="https://huggingface.co/Major-TOM", disable_shuffling=True)

    def _plan_jobs(self, manual_dir: str) -> list[UnitJob]:
      if self._jobs is None:
        parts = self._parts_dir or os.path.join(os.fspath(self.data_dir_root), "_parts",
                                                 self.builder_config.name)
        os.makedirs(parts, exist_ok=True)
        opts = dataclasses.replace(self._options, tile_size=self.builder_config.tile_size)
        self._jobs, self._plan = plan_units(os.fspath(manual_dir), opts, parts)
      return self._jobs

    def _split_generators(self, dl_manager):
      jobs = self._plan_jobs(dl_manager.manual_dir)
      if self._options.runner == "beam":
        beam = tfds.core.lazy_imports.apache_beam
        return {"train": beam.Create(jobs) | "units" >> beam.FlatMap(beam_unit_examples)}
      return {"train": self._generate_examples(jobs)}

    def _generate_examples(self, jobs):
      for job in jobs:
        yield from beam_unit_examples(job)

    def _log_download_bytes(self):
      # One line instead of TFDS's "Downloading and preparing dataset Unknown size ...": nothing
      # is downloaded, the manual dir is read.
      print(f"[terrafm] preparing {self.builder_config.name} tiles into {self.data_dir}",
            flush=True)

    def _log_download_done(self):
      pass

    def _download_and_prepare(self, dl_manager, download_config):
      jobs = self._plan_jobs(dl_manager.manual_dir)
      opts = dataclasses.replace(self._options, tile_size=self.builder_config.tile_size)
      if self._options.runner != "local":
        super()._download_and_prepare(dl_manager, download_config)
        write_extras(os.fspath(self.data_path), jobs, opts, self._plan)
        return
      run_local(jobs, self._options.num_workers)
      _, _, _, lengths = merge_units(jobs)
      template = self._get_filename_template(split_name="train")
      shards = [(j, n) for j, n in zip(jobs, lengths) if n]
      num_bytes = 0
      for i, (j, _) in enumerate(shards):
        dst = os.fspath(template.sharded_filepath(shard_index=i, num_shards=len(shards)))
        try:
          os.link(j.stem + ".array_record", dst)   # parts stay until the dataset is complete
        except OSError:
          shutil.copyfile(j.stem + ".array_record", dst)
        num_bytes += os.path.getsize(dst)
      split = tfds.core.SplitInfo(name="train", shard_lengths=[n for _, n in shards],
                                  num_bytes=num_bytes, filename_template=template)
      self.info.set_splits(tfds.core.SplitDict([split]))
      write_extras(os.fspath(self.data_path), jobs, opts, self._plan)

  return MajorTomTilesConfig, MajorTomTiles


@functools.lru_cache(maxsize=1)
def builder_classes():
  return _make_builder_classes()


def config_name(tile_size: int) -> str:
  return f"tile{tile_size}"


def dataset_dir(out_dir: str, tile_size: int) -> str:
  """The TFDS dataset directory that `prepare` writes under `out_dir`."""
  return os.path.join(out_dir, DATASET_NAME, config_name(tile_size), VERSION)


def check_majortom_dir(majortom_dir: str) -> None:
  """FileNotFoundError naming the folder unless it holds at least one Major-TOM product folder
  (checked before anything is written, so a wrong path leaves no output behind)."""
  from terrafm_jax.data.majortom.index import MODALITY_FOLDERS  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(majortom_dir):
    raise FileNotFoundError(f"{majortom_dir}: no such Major-TOM folder")
  if not any(os.path.isdir(os.path.join(majortom_dir, f)) for f in MODALITY_FOLDERS.values()):
    raise FileNotFoundError(f"{majortom_dir}: none of {', '.join(MODALITY_FOLDERS.values())} "
                            "inside; point --config.majortom_dir at the folder that holds them")


def prepare(majortom_dir: str, out_dir: str, options: PrepareOptions | None = None, *,
            beam_runner: Any = None, beam_options: Any = None) -> str:
  """Run the builder; returns the dataset directory. Skipped when the dataset is complete."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  opts = options or PrepareOptions()
  config_cls, builder_cls = builder_classes()
  out = dataset_dir(out_dir, opts.tile_size)
  if os.path.exists(os.path.join(out, "dataset_info.json")) and os.path.exists(
      os.path.join(out, "index.parquet")):
    return out
  check_majortom_dir(majortom_dir)
  parts = os.path.join(out_dir, "_parts", config_name(opts.tile_size))
  name = config_name(opts.tile_size)
  # a config listed in BUILDER_CONFIGS must be passed by name, any other as an object
  known = any(c.name == name for c in builder_cls.BUILDER_CONFIGS)
  builder = builder_cls(
      options=opts, parts_dir=parts, data_dir=out_dir, file_format="array_record",
      config=name if known else config_cls(name=name, tile_size=opts.tile_size))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=majortom_dir, beam_runner=beam_runner, beam_options=beam_options))
  if not os.path.exists(os.path.join(out, "index.parquet")):
    raise RuntimeError(f"prepare finished without an index in {out}")
  shutil.rmtree(parts, ignore_errors=True)
  return out
