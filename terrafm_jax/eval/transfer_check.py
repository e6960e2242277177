"""The real-pixel learning check: does pretraining beat random init on real EuroSAT images?

Protocol (low variance on a small labelled set, all images used):
  * features of every image of a EuroSAT MS folder (eval/readers/eurosat.py) through the L1C stem, with
    the run's input contract and the band table of the `eurosat/ms` task (B10 dropped, B8A moved
    to its contract position by name);
  * leave-one-out weighted k-NN (cosine similarity, the top-k other images vote with
    exp(sim / T)) at each k of `ks`;
  * three feature sets: (a) the pretrained teacher, (b) the same architecture at its random init,
    (c) raw pixels: the per-band mean and standard deviation of the normalised input;
  * a paired bootstrap over images of the accuracy differences (a) - (b) and (a) - (c): the
    same resampled images score both sides, so image difficulty cancels out.

Nothing is fitted to the EuroSAT images: there is no training split, only leave-one-out k-NN.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from terrafm_jax import protocol
from terrafm_jax.data.contract import InputContract
from terrafm_jax.eval import bands as bands_lib
from terrafm_jax.eval.readers import eurosat
from terrafm_jax.eval import features as features_lib
from terrafm_jax.eval import tasks as tasks_lib
from terrafm_jax.eval.weights import Weights

POOLINGS = protocol.TRANSFER_POOLINGS


@dataclasses.dataclass(frozen=True)
class Settings:
  ks: tuple[int, ...] = protocol.KNN_KS
  temperature: float = protocol.KNN_TEMPERATURE
  input_size: int = 64           # EuroSAT's native 64 px; a multiple of the patch size
  pooling: str = "cls"           # protocol.TRANSFER_POOLINGS: the headline (and in-loop) reading
  # Further readings of the same forward pass, scored at the end beside the headline, each against
  # the random init read the same way and against raw band statistics.
  also_poolings: tuple[str, ...] = ()
  num_bootstrap: int = 2000
  seed: int = 0
  batch_size: int = 30

  def __post_init__(self):
    for p in (self.pooling, *self.also_poolings):
      if p not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {p!r}")
    if self.pooling in self.also_poolings or len(set(self.also_poolings)) < len(
        self.also_poolings):
      raise ValueError(f"also_poolings {self.also_poolings} repeats a pooling (the headline is "
                       f"{self.pooling!r})")
    if not self.ks or min(self.ks) <= 0:
      raise ValueError(f"ks must be positive integers, got {self.ks}")


def loo_knn_correct(feats: np.ndarray, labels: np.ndarray, num_classes: int, k: int,
                    temperature: float) -> np.ndarray:
  """(N,) bool: is image i classified right by the k-NN vote of the other N - 1 images?"""
  x = np.asarray(feats, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  n = len(x)
  if n < 2:
    raise ValueError("leave-one-out k-NN needs at least 2 images")
  k = min(k, n - 1)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)                 # an image never votes for itself
  idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
  w = np.exp(np.take_along_axis(sim, idx, axis=1) / temperature)
  votes = np.zeros((n, num_classes))
  np.add.at(votes, (np.arange(n)[:, None], np.asarray(labels)[idx]), w)
  return np.argmax(votes, axis=1) == np.asarray(labels)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, num_bootstrap: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
  """Mean of a - b (per-image scores, e.g. 0/1 correct) with a percentile bootstrap interval.

  Images are resampled with replacement, the same draw for both sides (a paired design).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"paired scores must be two equal-length vectors, got {a.shape}, {b.shape}")
  d = a - b
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(d), size=(num_bootstrap, len(d)))
  means = d[draws].mean(axis=1)
  tail = (1.0 - level) / 2
  return {"diff": float(d.mean()), "lo": float(np.quantile(means, tail)),
          "hi": float(np.quantile(means, 1.0 - tail))}


def band_stats(images: np.ndarray) -> np.ndarray:
  """(N, 2C): per-band mean and standard deviation of (N, H, W, C) images."""
  x = np.asarray(images, np.float64)
  return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)


def pool(out: Mapping[str, Any], pooling: str):
  """Image features from the encoder's outputs ("cls" (B, d), "patch" (B, h, w, d)).

  "mean+std" is each feature's mean and standard deviation over the patch tokens, as band_stats
  is each band's over the pixels: the same summary of learned features and of raw pixels.
  """
  if pooling == "cls":
    return out["cls"]
  tokens = out["patch"].reshape(out["patch"].shape[0], -1, out["patch"].shape[-1])
  mean = tokens.mean(axis=1)
  if pooling == "mean":
    return mean
  if pooling == "mean+std":
    return jnp.concatenate([mean, tokens.std(axis=1)], axis=1)
  return jnp.concatenate([out["cls"], mean], axis=1)


class TransferCheck:
  """The EuroSAT images, read and normalised once; scores any parameters of one architecture."""

  def __init__(self, root: str, model_config, contract: InputContract,
               settings: Settings = Settings()):
    self.root, self.settings, self.contract = root, settings, contract
    self.model_config = model_config
    images, self.labels, self.paths = eurosat.read_all(root, "all")
    split = eurosat.EuroSATSplit(root, "all")
    task = tasks_lib.get_task("eurosat/ms")
    plans = bands_lib.plan(task.stems, split.inputs, contract, root)
    (self.stem,) = (p.stem for p in plans)
    self.inputs = np.stack([bands_lib.apply(plans, {"s2": x}, contract, p)[self.stem]
                            for x, p in zip(images, self.paths)])
    self.num_classes = len(eurosat.CLASSES)
    self._forward = None
    self._baselines: dict[str, dict[int, np.ndarray]] = {}

  @property
  def poolings(self) -> tuple[str, ...]:
    return (self.settings.pooling, *self.settings.also_poolings)

  def features(self, params) -> dict[str, np.ndarray]:
    """{pooling: (N, D) features of every image}, every pooling from one forward pass."""
    s = self.settings
    if self._forward is None:
      w = Weights(params, self.model_config, self.contract, {"kind": "transfer-check"})
      fwd = features_lib.make_forward(w, (self.stem,), s.input_size, ("cls", "patch"))
      poolings = self.poolings

      def forward(p, x):
        out = fwd(p, x)  # one encoder pass, every reading pooled from it
        return {q: pool(out, q) for q in poolings}
      self._forward = jax.jit(forward)
    n, bs = len(self.inputs), s.batch_size
    out = []
    for lo in range(0, n, bs):
      x = self.inputs[lo:lo + bs]
      got = len(x)
      if got < bs:
        x = np.concatenate([x, np.repeat(x[-1:], bs - got, axis=0)])
      out.append({q: np.asarray(f)[:got] for q, f in self._forward(params, {self.stem: x}).items()})
    return {q: np.concatenate([o[q] for o in out]) for q in self.poolings}

  def correct(self, feats: np.ndarray) -> dict[int, np.ndarray]:
    s = self.settings
    return {k: loo_knn_correct(feats, self.labels, self.num_classes, k, s.temperature)
            for k in s.ks}

  def _correct_sets(self, name: str, params) -> dict[str, dict[int, np.ndarray]]:
    """{feature set name: per-k correctness}: `name` for the headline pooling, name.<pooling>
    for the others."""
    feats = self.features(params)
    return {set_name(name, q, self.settings.pooling): self.correct(feats[q])
            for q in self.poolings}

  def accuracy(self, params) -> dict[int, float]:
    """LOO k-NN accuracy of `params` at every k, headline pooling (the in-loop reading)."""
    feats = self.features(params)[self.settings.pooling]
    return {k: float(c.mean()) for k, c in self.correct(feats).items()}

  def set_baselines(self, random_params) -> None:
    """Random-init and raw-pixel scores; fixed for a run, so computed once."""
    self._baselines = {**self._correct_sets("random_init", random_params),
                       "raw_band_stats": self.correct(band_stats(self.inputs))}

  def run(self, params) -> dict[str, Any]:
    """The full reading: accuracies of the feature sets and the paired intervals of each reading
    of the teacher against the random init read the same way and against raw band statistics."""
    if not self._baselines:
      raise RuntimeError("call set_baselines(random_params) first")
    s = self.settings
    sets = {**self._correct_sets("pretrained", params), **self._baselines}
    result: dict[str, Any] = {
        "num_images": int(len(self.labels)), "ks": list(s.ks), "temperature": s.temperature,
        "pooling": s.pooling, "also_poolings": list(s.also_poolings), "input_size": s.input_size,
        "num_bootstrap": s.num_bootstrap,
        "majority_class": float(np.bincount(self.labels).max() / len(self.labels)),
        "accuracy": {name: {str(k): float(c[k].mean()) for k in s.ks} for name, c in sets.items()},
        "intervals": {}}
    for q in self.poolings:
      mine = set_name("pretrained", q, s.pooling)
      for other in (set_name("random_init", q, s.pooling), "raw_band_stats"):
        result["intervals"][f"{mine}-{other}"] = {
            str(k): paired_bootstrap(sets[mine][k], sets[other][k], s.num_bootstrap, s.seed)
            for k in s.ks}
    return result


def set_name(name: str, pooling: str, headline: str) -> str:
  """"pretrained" / "random_init" for the headline pooling, "pretrained.mean+std" for another."""
  return name if pooling == headline else f"{name}.{pooling}"


def format_table(result: Mapping[str, Any]) -> str:
  """The console table of `TransferCheck.run`."""
  ks = result["ks"]
  lines = [f"Real-pixel learning check: EuroSAT MS, {result['num_images']} images, leave-one-out "
           f"k-NN ({result['pooling']} features, {result['input_size']} px, T = "
           f"{result['temperature']}; majority class {result['majority_class']:.3f})",
           "  " + f"{'features':<22}" + "".join(f"{f'k = {k}':>10}" for k in ks)]
  for name, by_k in result["accuracy"].items():
    lines.append("  " + f"{name:<22}" + "".join(f"{by_k[str(k)]:>10.3f}" for k in ks))
  for pair, by_k in result["intervals"].items():
    cells = "".join(f"  k={k}: {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
                    for k, v in by_k.items())
    lines.append(f"  {pair:<44}{cells}")
  return "\n".join(lines)


class InRun:
  """The check inside a training run (config.transfer): every `every_steps` the teacher's LOO
  k-NN accuracy, at the end the full reading against the run's own random init and raw pixels.

  Readings are logged as eval/eurosat_ms/loo_knn_k<k> (percent, beside the other in-loop
  evaluations) and transfer/<feature set>/k<k>, transfer/<pair>/k<k>/{diff,lo,hi} at the end.
  """

  def __init__(self, config, contract: InputContract, random_encoder_params):
    t = config.transfer
    model_config = config.model.copy_and_resolve_references()
    model_config.drop_path_rate = 0.0
    model_config.dtype = "float32"
    self.every_steps = t.every_steps
    self.check = TransferCheck(t.data_root or eurosat.default_root(), model_config, contract,
                               Settings(ks=tuple(t.ks), temperature=t.temperature,
                                        input_size=t.input_size, pooling=t.pooling,
                                        also_poolings=tuple(t.get("also_poolings", ())),
                                        num_bootstrap=t.num_bootstrap, seed=t.seed))
    random_params = self._host(random_encoder_params)
    self._random_params = random_params
    if random_params is not None:
      self.check.set_baselines(random_params)
    self.scene_paths = _scene_paths(t.pca_scene)

  @staticmethod
  def _host(params):
    """The parameters on this host; None off process 0. Arrays that span processes (the train
    state's) are gathered first, a collective: call on every process. Process-local arrays (a
    random init computed on this host's devices) are taken as they are."""
    leaves = [a for a in jax.tree.leaves(params) if isinstance(a, jax.Array)]
    if jax.process_count() > 1 and any(not a.is_fully_addressable for a in leaves):
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      params = multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params) if jax.process_index() == 0 else None

  def in_loop(self, teacher_encoder_params) -> dict[str, float] | None:
    params = self._host(teacher_encoder_params)
    if params is None:
      return None
    acc = self.check.accuracy(params)
    return {f"eval/eurosat_ms/loo_knn_k{k}": 100.0 * v for k, v in acc.items()}

  def final(self, teacher_encoder_params) -> tuple[dict[str, Any], dict[str, float]] | None:
    """(the result of TransferCheck.run, its scalars); None off process 0."""
    params = self._host(teacher_encoder_params)
    if params is None:
      return None
    result = self.check.run(params)
    scalars = {f"transfer/{name}/k{k}": v for name, by_k in result["accuracy"].items()
               for k, v in by_k.items()}
    for pair, by_k in result["intervals"].items():
      for k, iv in by_k.items():
        scalars.update({f"transfer/{pair}/k{k}/{w}": v for w, v in iv.items()})
    return result, scalars


  def pictures(self, teacher_encoder_params) -> list[dict[str, Any]] | None:
    """PCA pictures of the patch features of the real scenes `config.transfer.pca_scene`, for
    the teacher and the random init (eval/feature_pca.py), one dict per scene; None without a
    scene or off process 0."""
    params = self._host(teacher_encoder_params)
    if params is None or not self.scene_paths:
      return None
    from terrafm_jax.eval import feature_pca  # pylint: disable=g-import-not-at-top
    out = []
    for path in self.scene_paths:
      scene = feature_pca.read_scene(path)
      row = {"scene": path}
      for name, p in (("pretrained", params), ("random_init", self._random_params)):
        w = Weights(p, self.check.model_config, self.check.contract, {"kind": "transfer-check"})
        row[name] = feature_pca.scene_picture(w, scene)
      out.append(row)
    return out


def _scene_paths(choice: str) -> list[str]:
  """"" none; "auto" the default eo_samples scenes that are present; else GeoTIFF paths, comma
  separated, that must exist."""
  if not choice:
    return []
  if choice == "auto":
    from terrafm_jax.eval import feature_pca
    from terrafm_jax.eval.readers import eosamples  # pylint: disable=g-import-not-at-top
    paths = [os.path.join(eosamples.default_root(), s) for s in feature_pca.DEFAULT_SCENES]
    return [p for p in paths if os.path.exists(p)]
  paths = [p.strip() for p in choice.split(",") if p.strip()]
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f"config.transfer.pca_scene: {p!r}: no such file")
  return paths


def maybe_create(config, contract: InputContract, random_encoder_params) -> InRun | None:
  """The run's check, or None when config.transfer.enabled is off or (with skip_if_missing) the
  EuroSAT folder is absent; a warning says which."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  t = config.transfer
  if not t.enabled:
    return None
  root = t.data_root or eurosat.default_root()
  if not os.path.isdir(root) and t.skip_if_missing:
    logging.warning("real-pixel learning check disabled: no EuroSAT folder at %s "
                    "(config.transfer.data_root)", root)
    return None
  return InRun(config, contract, random_encoder_params)
