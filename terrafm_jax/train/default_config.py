"""The pretraining config schema, with the paper recipe as defaults (METHOD.md 2, 3, 6).

configs/*.py start from `get_base_config(variant)` and override. Every value used by the trainer
is a field here; train/config_checks.py turns impossible combinations into clear errors before
anything runs.
Tuples, not lists: ml_collections can override tuples from the command line.
"""
from __future__ import annotations

import ml_collections

from terrafm_jax import protocol

from terrafm_jax.models import axes
from terrafm_jax.models import config as model_config


def get_base_config(variant: str = "B/16") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.global_batch_size = 1024
  c.num_epochs = 150
  # Steps per epoch: -1 = dataset size // global batch ("epoch" = one pass over the multimodal
  # tiles, METHOD.md 9 #6). total_steps: -1 = num_epochs * steps_per_epoch.
  c.steps_per_epoch = -1
  c.total_steps = -1
  # Stop cleanly (with a checkpoint) once this step is done, inside a schedule of total_steps:
  # a time-limited job slot runs a slice of the run and the next start resumes it. The compiled
  # step depends on total_steps (the schedules), not on where this run stops. 0 = off.
  c.stop_after_step = 0

  c.model = model_config.get_model_config(variant)
  c.model.drop_path_rate = 0.1
  c.model.dtype = "bfloat16"

  c.data = ml_collections.ConfigDict()
  c.data.source = "pipeline"        # "pipeline" (terrafm_jax.data) | "random" (tests, benchmarks)
  c.data.data_dir = ""              # prepared shards (terrafm_jax.data.prepare); required unless
  # builtin.enabled (the small synthetic set written on first use; configs/smoke.py only).
  c.data.builtin = ml_collections.ConfigDict(dict(
      enabled=False, root="", num_cells=64, cell_size=64, tile_size=32, seed=0,
      # Real unlabelled scenes written beside the synthetic cells (data/real_scenes.py): "" none,
      # "auto" the eo_samples folder beside the checkout if present, or a folder.
      real_scenes="",
      # Stride (px) between the real scenes' overlapping cell crops; 0: the fewest that cover.
      real_stride=0))
  # The run's input contract (normalisation, S1 nodata fill), saved in checkpoints and exports:
  # "prepared" = the prepared data's contract.json, "default" = the built-in one, or a JSON path.
  c.data.contract = "prepared"
  c.data.num_examples = -1          # -1 = length of the prepared dataset
  c.data.n_global = 2
  c.data.n_local = 6
  c.data.global_size = 224
  c.data.local_size = 96
  c.data.global_scale = (0.25, 1.0)
  c.data.local_scale = (0.05, 0.25)
  c.data.ratio = (3 / 4, 4 / 3)      # RandomResizedCrop aspect ratios
  c.data.flip_p = 0.5
  # Spectral jitter of the optical views (train/views.py): (sigma of a per-band log-gain, sigma of
  # a per-view log-brightness), drawn per sample and view. The paper uses no photometric
  # augmentation (METHOD.md 2), so (0, 0) here; the smoke run on few tiles needs it (README).
  c.data.spectral_jitter = (0.0, 0.0)
  c.data.modality_reading = "a"     # METHOD.md 4: "a" one modality w.p. single_p else >= 2; "b"
  c.data.single_p = 0.5
  c.data.modalities = ("s1", "s2_l1c", "s2_l2a")  # modalities the draws may use; ("s2_l2a",) = SS
  c.data.keep_p = 0.5
  c.data.granularity = "sample"     # modality draw per "sample" (and view) or per "batch"
  # Fixed views per modality group (s1 / L1C / L2A / fused) in every block of `group_block`
  # samples, so each stem runs only on its views (data/modality_groups.py). The block must divide
  # the per-shard batch; larger blocks round the group sizes less. False: every view runs all
  # three stems and the fusion, then selects its path (same values).
  c.data.modality_groups = True
  c.data.group_block = 8
  # Crop resize when the step is compiled for CPU: True = the FFI kernel that sums each output
  # pixel's non-zero taps of jax.image's weights (terrafm_jax/ops/resample.cc); False =
  # jax.image's dense form. A TPU / GPU compile always gets the dense form (chosen at lowering).
  c.data.crop_kernel = True
  c.data.worker_count = 4
  # Land-cover-stratified sampler (terrafm_jax.data.sampling.SamplingConfig; METHOD.md 5).
  c.data.sampling = ml_collections.ConfigDict(dict(beta=0.5, ocean_fraction=0.02, strata_beta=0.0))

  c.dino = ml_collections.ConfigDict()
  c.dino.student_temp = 0.1
  c.dino.warmup_teacher_temp = 0.04
  c.dino.teacher_temp = 0.06
  c.dino.warmup_teacher_temp_epochs = 30.0
  c.dino.momentum_teacher = 0.996
  c.dino.momentum_teacher_end = 1.0
  c.dino.center_momentum = 0.9      # m (DINO default)
  c.dino.center_h_momentum = 0.9    # m_h, not published
  c.dino.alpha = 0.8                # weight of the batch center c vs the land-cover center c_h
  # H: WorldCover class indices (DATA.md 3) treated as "high-frequency"; the published examples are
  # tree cover (0), grassland (2) and open sea (7 = permanent water). () disables c_h updates.
  c.dino.high_freq_classes = (0, 2, 7)
  # Data prepared without land cover has no labels: c_h never updates and the loss becomes DINO
  # with alpha x c centering. That stops the run unless alpha=1 or this is set (then it warns and
  # records "dual_centering": "inactive" in run_metadata.json).
  c.dino.allow_unlabelled = False

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 5e-4            # per lr_batch_reference images (DINO scaling rule)
  c.optim.lr_batch_reference = 256
  c.optim.min_lr = 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.weight_decay = 0.04
  c.optim.weight_decay_end = 0.4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.clip_grad = 3.0           # per parameter tensor; 0 disables
  c.optim.freeze_last_layer_epochs = 1.0
  c.optim.freeze_regex = r"^head/last_layer$"
  # No decay on biases and 1-D tensors (norm scales); decay forced on these names (DINO decays
  # cls_token, pos_embed and the (1, A) modality embeddings, which are not 1-D).
  c.optim.wd_exclude_regex = r"(^|/)bias$"
  c.optim.wd_include_regex = r"(cls_token|pos_embed|_embed)$"

  # Mesh axis sizes (-1 = the rest of the devices) and logical -> mesh axis rules.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  c.logical_axis_rules = axes.DEFAULT_RULES

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, use_async=True))
  c.log_every_steps = 50
  c.log_parameter_table = False     # print the per-parameter table (always in train.log)
  c.write_report = True             # <workdir>/report.png at the end of the run (train/report.py)
  c.profile = ml_collections.ConfigDict(dict(enabled=False, first_step=10, steps=5))
  c.peak_flops_per_device = 0.0     # 0 = look up the device kind (metrics.PEAK_FLOPS)
  # XLA options for the train step on the CPU backend only (ignored on GPU/TPU): (name, value)
  # pairs, e.g. (("xla_cpu_experimental_ynn_fusion_type",
  # "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"),): S/16 1.05x, B/16 0.95x on a 2-core
  # EPYC (measured with bench/ab_step.py, issue #9), so not the default.
  c.xla_cpu_options = ()

  # Learning check at the end of the run: kNN on a held-out labelled set, trained vs random init.
  c.knn = ml_collections.ConfigDict(dict(
      enabled=False, num_cells=32, seed=12345, k=protocol.KNN_K,
      temperature=protocol.KNN_TEMPERATURE, modality="all",
      img_size=-1, batch_size=64))

  # Real-pixel learning check (eval/transfer_check.py): leave-one-out k-NN on the EuroSAT MS
  # images of `data_root` ("" = eurosat_ms_subset beside the checkout), the teacher against the
  # run's random init and raw band statistics, with paired bootstrap intervals at the end of the
  # run; the teacher's accuracy also every `every_steps` (0 = only at the end).
  c.transfer = ml_collections.ConfigDict(dict(
      enabled=False, data_root="", skip_if_missing=True, every_steps=0, ks=protocol.KNN_KS,
      temperature=protocol.KNN_TEMPERATURE, input_size=64, pooling="cls", num_bootstrap=2000,
      seed=0,
      # Further readings (protocol.TRANSFER_POOLINGS) of the teacher, scored at the end beside
      # `pooling`, each against the random init read the same way and raw band statistics.
      also_poolings=(),
      # Real L1C scenes whose patch features are drawn as PCA-RGB in report.png: "" none,
      # "auto" the eo_samples scenes of eval/feature_pca.py that are present, or GeoTIFF paths
      # (comma separated).
      pca_scene=""))

  # In-loop evaluation (terrafm_jax/eval/inloop.py): a benchmark task and protocol scored on the
  # teacher every `every_steps` (0 = off), logged as eval/<task>/<protocol>. skip_if_missing: a
  # missing data folder disables it with a warning instead of stopping the run.
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=0, task="eosamples/lulc-s2_l2a", protocol="knn", data_root="",
      partition="default", batch_size=64, max_samples=-1, skip_if_missing=False))

  return c
