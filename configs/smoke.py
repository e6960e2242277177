"""Smoke run: the tiny "Mu" ViT on the built-in set (synthetic cells and the real eo_samples
scenes), a few minutes on 2 CPU cores.

It must *learn*, not just run. At the end the teacher is scored twice against the same architecture
at its random init: on real pixels, leave-one-out k-NN on 270 EuroSAT images (beside raw band
statistics, with paired bootstrap intervals); and by kNN on a held-out labelled synthetic set,
within each modality and across modalities (memory in one, queries in another).
  python -m terrafm_jax.train --config=configs/smoke.py --workdir=/tmp/smoke
Variants: `:test` (a handful of steps, random data, no kNN; used by the tests); `:transfer` (the
first smoke recipe, peak lr 5e-4, 5200 steps, ~12.5 min).
"""
from terrafm_jax.train import default_config


def get_config(arg: str | None = None):
  c = default_config.get_base_config("Mu/8")
  c.model.img_size = 32                      # pos-embed grid 4x4
  c.model.dtype = "float32"
  c.model.drop_path_rate = 0.0               # tiny ViT, short run: no need to regularise
  c.model.fusion_heads = 4
  c.model.head.out_dim = 1024
  c.model.head.hidden_dim = 256
  c.model.head.bottleneck_dim = 64
  c.global_batch_size = 32
  c.num_epochs = 130                         # 416 tiles (256 synthetic, 160 real): 1690 steps
  c.data.builtin.enabled = True             # the only config that trains on the synthetic set
  c.data.builtin.num_cells = 64
  c.data.builtin.cell_size = 128
  c.data.builtin.tile_size = 64
  c.data.global_size = 32
  c.data.local_size = 16
  c.data.n_local = 4
  c.data.global_scale = (0.4, 1.0)
  c.data.local_scale = (0.05, 0.4)
  c.data.worker_count = 0
  # Peak lr 1.5e-3 at batch 32: in a run this short, 3x the 5e-4 of the first smoke recipe
  # transfers better to real pixels (docs/RESULTS.md 1, "Real-pixel learning check").
  c.optim.base_lr = 0.012
  c.optim.warmup_epochs = 2.0
  c.optim.freeze_last_layer_epochs = 1.0
  # A sharp, constant teacher. With the paper's 0.04 -> 0.06 the teacher stays near uniform in a
  # run this short (entropy ~6.2 of log K = 6.9) and the S2 features lose class information
  # (docs/RESULTS.md 2.1).
  c.dino.warmup_teacher_temp = 0.03
  c.dino.teacher_temp = 0.03
  c.dino.momentum_teacher = 0.99
  c.checkpoint.every_steps = 650
  c.checkpoint.keep = 2
  c.log_every_steps = 10
  c.knn.enabled = True
  c.knn.num_cells = 400                      # 200 kNN memory + 200 query tiles
  # Headline: the mean of the three within-modality kNN accuracies; every modality and every
  # cross-modal pair is logged and printed too.
  c.knn.modality = "all"
  c.knn.k = 20
  c.data.group_block = 4                     # divides the per-shard batch on 1 to 8 devices
  # Real pixels in the pretraining set: the unlabelled eo_samples scenes (TerraMind tri-modal,
  # Copernicus-FM L1C; never EuroSAT) cut into 128 px cells beside the synthetic ones
  # (data/real_scenes.py); synthetic only, with a warning, where that folder is absent.
  c.data.builtin.real_scenes = "auto"
  # The real-pixel learning check (docs/RESULTS.md 1): leave-one-out k-NN
  # on the 270 EuroSAT MS images, pretrained vs random init vs raw band statistics, with paired
  # bootstrap intervals at the end and the teacher's reading every 425 steps.
  c.transfer.enabled = True
  c.transfer.every_steps = 425
  c.transfer.pooling = "cls+mean"
  # A second reading of the same teacher: each patch feature's mean and standard deviation over
  # the image, the learned counterpart of the raw band statistics (docs/RESULTS.md 1.1).
  c.transfer.also_poolings = ("mean+std",)
  c.transfer.pca_scene = "auto"
  if arg == "test":
    c.data.source = "random"
    c.data.num_examples = 4 * c.global_batch_size
    c.data.builtin.tile_size = 32
    c.global_batch_size = 8
    c.data.group_block = 1                   # 8 samples over up to 8 shards
    c.data.n_local = 2
    c.num_epochs = 2
    c.optim.warmup_epochs = 1.0
    c.checkpoint.every_steps = 2
    c.log_every_steps = 1
    c.knn.enabled = False
    c.eval.every_steps = 0
    c.transfer.enabled = False
    c.data.builtin.real_scenes = ""
    c.write_report = False                   # the many short test runs skip matplotlib
  elif arg == "transfer":
    # The first smoke recipe (peak lr 5e-4) four times longer, as measured (docs/RESULTS.md 1.5).
    c.num_epochs = 400
    c.optim.base_lr = 0.004
    c.checkpoint.every_steps = 50
    c.transfer.every_steps = 1300
  elif arg:
    raise ValueError(f"configs/smoke.py: unknown variant {arg!r} (expected '', 'test' or "
                     "'transfer')")
  return c
