"""The evaluation config schema (`python -m terrafm_jax.eval --config=configs/eval.py:<arg>`).

  (no arg) one task x protocol, chosen with --task / --protocol (or --config.tasks=...)
  paper    every task x protocol of the paper's tables (METHOD.md 7) whose data folder is given:
           --config.data_roots.geobench=$GEO_BENCH_DIR --config.data_roots.copernicus=/data/cobench
  eosamples the real-pixel sanity check on ../shared/eo_samples (k-NN and linear probe, 3 stems)
  tiny     the protocols shrunk for CPU tests and the in-loop evaluation of the smoke run
  products embedding products (Major-TOM-schema parquet, eval/products.py) joined to a label file:
           --config.products.sources=ours=emb_a/,theirs=emb_b/ --config.products.labels=l.csv

Protocol hyper-parameters follow METHOD.md 7 (Galileo / Copernicus-Bench): k-NN k = 20, T = 0.07;
fine-tuning AdamW, 10 % warm-up, cosine, lr sweep on validation; frozen-encoder heads 50 epochs.
"""
import ml_collections

from terrafm_jax import protocol

from terrafm_jax.eval import tasks as tasks_lib


def get_eval_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.weights = ""                 # workdir | .pth/.safetensors | random:<variant>
  c.step = -1                    # workdir checkpoint step (-1: latest)
  c.tasks = ()                   # task names (eval/tasks.py)
  c.protocols = ()               # empty: each task's own protocols (the paper's)
  c.partitions = ("default",)    # k-NN also runs on each extra partition listed (e.g. 0.01x_train)
  # Data folder per benchmark; a task whose benchmark has no folder is skipped by suites.
  c.data_roots = ml_collections.ConfigDict(dict(geobench="", copernicus="", eosamples="",
                                                eurosat=""))
  c.out_dir = "eval_results"
  c.cache_dir = ""               # "": <out_dir>/feature_cache
  c.seed = 0
  c.batch_size = 32              # feature extraction / fine-tuning batch
  c.input_size = -1              # -1: the task's default (native size rounded up to the patch)
  c.max_samples = -1             # cap on samples per split (-1: all), for quick looks
  c.knn = ml_collections.ConfigDict(dict(k=protocol.KNN_K, temperature=protocol.KNN_TEMPERATURE))
  c.linear = ml_collections.ConfigDict(dict(
      lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2), epochs=50, batch_size=256, weight_decay=1e-4))
  c.finetune = ml_collections.ConfigDict(dict(
      lrs=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3), epochs=50, weight_decay=0.05, layer_decay=0.75,
      warmup_fraction=0.1))
  c.segmentation = ml_collections.ConfigDict(dict(
      lrs=(1e-4, 1e-3, 1e-2), epochs=50, batch_size=16, upernet_channels=512,
      # Copernicus-Bench's auxiliary FCN head on the 1x pyramid level (0: none)
      upernet_aux_loss_weight=0.4, upernet_aux_channels=256, weight_decay=1e-4))
  c.plots = True
  # Embedding products as features (eval/products.py, eval/product_probes.py): when `sources` is
  # set, the CLI scores them instead of tasks and no --weights is needed.
  c.products = ml_collections.ConfigDict(dict(
      sources="",            # "name=path,name=path": parquet file, folder or glob per product
      labels="",             # label file: csv / parquet / geojson / gpkg with a `label_column`
      join="grid_cell",      # grid_cell | geometry (points or polygons; csv: lon, lat)
      label_column="label",
      ks=protocol.KNN_KS, folds=5, num_bootstrap=2000))

  if arg == "paper":
    c.tasks = tuple(n for n in tasks_lib.TASKS if not n.startswith("eosamples/"))
    c.partitions = ("default", "0.01x_train")
  elif arg == "eosamples":
    c.tasks = tuple(n for n in tasks_lib.TASKS if n.startswith("eosamples/"))
    c.linear.epochs = 100
  elif arg == "products":
    c.protocols = ("knn", "linear")
  elif arg == "tiny":
    c.linear.lrs = (1e-3, 1e-2)
    c.linear.epochs = 20
    c.finetune.lrs = (1e-3,)
    c.finetune.epochs = 2
    c.segmentation.lrs = (1e-2,)
    c.segmentation.epochs = 5
    c.segmentation.upernet_channels = 16
    c.segmentation.upernet_aux_channels = 8
    c.batch_size = 8
  elif arg:
    raise ValueError(f"configs/eval.py: unknown variant {arg!r} (expected '', 'paper', "
                     "'eosamples', 'products' or 'tiny')")
  return c
