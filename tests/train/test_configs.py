"""Configs load, validate, take `:arg` variants and overrides, and reject bad values clearly."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("name,arg", [("terrafm_b", None), ("terrafm_b", "S/16"),
                                      ("terrafm_l", None), ("smoke", None), ("smoke", "test"),
                                      ("smoke", "transfer")])
def test_configs_validate(name, arg):
  from terrafm_jax.errors import ConfigError
  from terrafm_jax.train import config_checks
  c = _load(name).get_config(arg)
  if name != "smoke":  # recipe configs name their prepared data; smoke trains on built-in data
    with pytest.raises(ConfigError, match="config.data.data_dir is required"):
      config_checks.validate(c)
    c.data.data_dir = "/data/prepared"
  config_checks.validate(c)
  for v in (c.data.global_scale, c.dino.high_freq_classes, c.logical_axis_rules):
    assert isinstance(v, tuple)


def test_paper_recipe_values():
  b, l = _load("terrafm_b").get_config(), _load("terrafm_l").get_config()
  assert (b.model.variant, b.global_batch_size, b.num_epochs) == ("B/16", 1024, 150)
  assert (l.model.variant, l.global_batch_size, l.num_epochs) == ("L/16", 2048, 200)
  assert b.dino.alpha == 0.8 and b.dino.student_temp == 0.1
  assert (b.dino.warmup_teacher_temp, b.dino.teacher_temp) == (0.04, 0.06)
  assert (b.dino.momentum_teacher, b.dino.momentum_teacher_end) == (0.996, 1.0)
  assert (b.optim.weight_decay, b.optim.weight_decay_end, b.optim.clip_grad) == (0.04, 0.4, 3.0)
  assert b.model.head.out_dim == 65536 and b.model.drop_path_rate == 0.1
  assert (b.data.n_global, b.data.n_local, b.data.global_size, b.data.local_size) == (2, 6, 224, 96)


@pytest.mark.parametrize("field,value,msg", [
    ("dino.alpha", 1.5, "config.dino.alpha"),
    ("data.local_size", 90, "config.data.local_size"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("dino.high_freq_classes", (0, 12), "config.dino.high_freq_classes"),
    ("global_batch_size", 0, "config.global_batch_size"),
    ("knn.modality", "s2", "config.knn.modality"),
    ("stop_after_step", -1, "config.stop_after_step"),
    ("xla_cpu_options", (("only_a_name",),), "config.xla_cpu_options"),
])
def test_invalid_values_name_the_field(field, value, msg):
  from terrafm_jax.train import config_checks
  c = _load("terrafm_b").get_config()
  node = c
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=msg.replace(".", r"\.")):
    config_checks.validate(c)


def test_mesh_shape_errors():
  import ml_collections
  from terrafm_jax.train import sharding
  assert sharding.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=2, model=1)), 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=3, model=1)), 8)


def test_cli_rejects_bad_override(cli):
  out = cli(["--config=configs/smoke.py:test", "--workdir=/tmp/terrafm_bad_cfg",
             "--config.dino.alpha=2.0"], expect_rc=2, timeout=120)
  assert "config.dino.alpha must be in [0, 1]" in out.stderr


def test_xla_cpu_options_reach_the_cpu_compile_only_when_set():
  from terrafm_jax.train import run_setup
  c = _load("terrafm_b").get_config()
  assert run_setup.compiler_options(c, "cpu") is None  # default: XLA's own
  c.xla_cpu_options = (("xla_cpu_experimental_ynn_fusion_type",
                        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"),)
  assert run_setup.compiler_options(c, "cpu") == {  # chosen by the platform compiled for
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  assert run_setup.compiler_options(c, "tpu") is None


def test_cli_overrides_xla_cpu_options(cli):
  out = cli(["--config=configs/smoke.py:test", "--workdir=/tmp/terrafm_bad_cfg",
             '--config.xla_cpu_options=(("xla_cpu_prefer_vector_width",),)'], expect_rc=2,
            timeout=120)
  assert "config.xla_cpu_options must hold (name, value) pairs" in out.stderr


def test_knn_weighted_vote():
  from terrafm_jax.eval import knn
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(3, 16)) * 5
  y_tr = np.repeat(np.arange(3), 20)
  x_tr = centers[y_tr] + rng.normal(size=(60, 16))
  y_te = np.repeat(np.arange(3), 5)
  x_te = centers[y_te] + rng.normal(size=(15, 16))
  assert knn.knn_accuracy(x_tr, y_tr, x_te, y_te, num_classes=3, k=5) == 1.0
  # Weighting: one very close neighbour of class 1 outvotes two distant class-0 neighbours.
  tr = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
  pred = knn.knn_predict(tr, np.array([1, 0, 0]), np.array([[1.0, 0.02]]), num_classes=2, k=3)
  assert pred[0] == 1


def test_learning_check_cross_modal_knn():
  """Aligned modalities classify each other's queries; unaligned (random stems) do not."""
  from terrafm_jax.eval import synthetic_knn as learning_check
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 32)) * 3
  labels = np.repeat(np.arange(4), 30)
  base = centers[labels] + rng.normal(size=(120, 32))
  rotation = np.linalg.qr(rng.normal(size=(32, 32)))[0]
  mem, qry = np.arange(0, 120, 2), np.arange(1, 120, 2)
  kw = dict(k=5, temperature=0.07, num_classes=4)
  unaligned = learning_check.knn_matrix({"s1": base, "s2_l2a": base @ rotation}, labels, mem, qry,
                                        **kw)
  aligned = learning_check.knn_matrix({"s1": base, "s2_l2a": base + 0.1}, labels, mem, qry, **kw)
  assert unaligned[("s1", "s1")] == unaligned[("s2_l2a", "s2_l2a")] == 1.0
  assert unaligned[("s1", "s2_l2a")] < 0.6 and aligned[("s1", "s2_l2a")] == 1.0
  res = learning_check.summarize(unaligned, aligned, "all")
  assert res["random_init"] == 1.0 and res["margin"] == 0.0
  assert set(res["cross_modal"]) == {"s1->s2_l2a", "s2_l2a->s1"}
  assert res["cross_modal_mean"]["pretrained"] == 1.0
  assert res["cross_modal_mean"]["random_init"] == np.mean(
      [unaligned[("s1", "s2_l2a")], unaligned[("s2_l2a", "s1")]])
  assert learning_check.summarize(unaligned, aligned, "s1")["modality"] == "s1"


def test_recipe_config_without_data_dir_is_a_config_error(cli):
  proc = cli(["--config=configs/terrafm_b.py:Ti/16", "--workdir=/tmp/unused_terrafm_b"],
             expect_rc=2, timeout=120)
  assert "invalid configuration" in proc.stderr
  assert "config.data.data_dir is required" in proc.stderr


def test_data_errors_are_not_reported_as_configuration(tmp_path, cli):
  proc = cli(["--config=configs/smoke.py:test", f"--workdir={tmp_path / 'w'}",
              "--config.data.source=pipeline", f"--config.data.data_dir={tmp_path / 'nothing'}"],
             expect_rc=1, timeout=120)
  assert "invalid configuration" not in proc.stderr
  assert "FileNotFoundError" in proc.stderr and "nothing" in proc.stderr


def test_unlabelled_data_stops_dual_centering_unless_opted_out():
  from terrafm_jax.errors import ConfigError
  from terrafm_jax.train import run_setup
  c = _load("smoke").get_config(None)
  with pytest.raises(ConfigError, match="no land-cover labels"):
    run_setup.check_landcover(c, 0.0)
  assert run_setup.check_landcover(c, 0.7) == "active"
  c.dino.alpha = 1.0
  assert run_setup.check_landcover(c, 0.0).startswith("off")
  c.dino.alpha = 0.8
  c.dino.allow_unlabelled = True
  assert run_setup.check_landcover(c, 0.0).startswith("inactive")


def test_local_workdir_with_several_processes_warns_once(caplog):
  import logging
  from terrafm_jax.train import workdir
  workdir._warned_local = False
  with caplog.at_level(logging.WARNING):
    workdir.warn_if_local_multiprocess(workdir.resolve("/tmp/run"), 2)
    workdir.warn_if_local_multiprocess(workdir.resolve("/tmp/run"), 2)
    workdir.warn_if_local_multiprocess(workdir.resolve("gs://bucket/run"), 2)
    workdir.warn_if_local_multiprocess(workdir.resolve("/tmp/run"), 1)
  msgs = [r.getMessage() for r in caplog.records if "shared filesystem" in r.getMessage()]
  assert len(msgs) == 1 and "2 processes" in msgs[0]


def test_uri_workdirs_are_not_made_local():
  import os
  from terrafm_jax.train import workdir
  assert str(workdir.resolve("gs://bucket/run")) == "gs://bucket/run"
  assert str(workdir.resolve("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  assert str(workdir.resolve("rel/dir")) == os.path.abspath("rel/dir")
