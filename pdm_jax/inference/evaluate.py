"""Evaluation runs: samples from a checkpoint (or the training state) scored with FID / KID / IS and, on digits, the
digits classifier's report.

The FID Inception network and the real data's reference statistics are loaded once per run; the statistics are
cached on disk (pdm_jax/evaluation/reference_stats.py), keyed by dataset, split, resolution and weights hash, plus the
number of real images and a hash of the data fields that change which pixels the split yields.
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from pdm_jax import data
from pdm_jax import image_grid
from pdm_jax.evaluation import inception
from pdm_jax.evaluation import inception_weights
from pdm_jax.evaluation import metrics
from pdm_jax.evaluation import reference_stats
from pdm_jax.inference import generate
from pdm_jax.inference import prototype_health
from pdm_jax.inference import restore
from pdm_jax.training import loop

EVAL_DIR = 'eval'
METRICS_FILE = 'metrics.json'
PERIODIC_FILE = 'periodic.jsonl'  # one JSON line per periodic evaluation: the metric-vs-step history of a run
# Data fields that change which real images a split yields, or their pixels: part of the reference-stats key.
_REAL_IMAGE_FIELDS = ('split', 'image_size', 'num_channels', 'attribute', 'examples_per_class', 'subset_seed',
                      'resize_mode')


@dataclasses.dataclass
class InceptionReference:
  """The FID Inception network, the real data's statistics under it, and the weights' content hash."""
  extractor: inception.InceptionFeatureExtractor
  reference: reference_stats.ReferenceStats
  weights_hash: str


def _key_part(text) -> str:
  """A cache-key-safe version of text: runs of other characters (e.g. '/' in 'eurosat/rgb', '+') become '-'."""
  return re.sub(r'[^A-Za-z0-9.-]+', '-', str(text)).strip('-') or 'none'


def reference_key(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(dataset, split) parts of the reference-stats cache key; split carries num_real and a hash of the data fields."""
  fields = {name: config.data.get(name, None) for name in _REAL_IMAGE_FIELDS}
  if config.data.name == 'image_folder':
    # The folder is the dataset: two folders must not share a cache entry.
    fields['data_dir'] = os.path.abspath(os.path.expanduser(str(config.data.data_dir)))
    # Its labels pick the balanced subset; keyed only when set, so folders without one keep their cached stats.
    if config.data.get('attributes_file', None):
      fields['attributes_file'] = os.path.abspath(os.path.expanduser(str(config.data.attributes_file)))
  fields_hash = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]
  split = config.data.get('split', None) or 'default'
  return _key_part(config.data.name), f'{_key_part(split)}-n{int(config.eval.num_real)}-{fields_hash}'


def real_images(config: ml_collections.ConfigDict) -> Iterator[np.ndarray]:
  """uint8 (B, H, W, C) batches of the config's split in one ordered pass, config.eval.num_real images at most."""
  remaining = int(config.eval.num_real)
  batch_size = max(1, min(int(config.eval.batch_size), remaining))
  if config.data.name == 'digits':
    # The digits pass yields whole batches only; one batch of the (tiny) set keeps every image.
    info, _ = data.build(config.data, global_batch_size=1, seed=config.seed, train=False)
    batch_size = max(1, min(remaining, info.num_examples))
  # Every host reads the whole pass: the statistics are computed host-side, the same on each.
  _, batches = data.build(config.data, global_batch_size=batch_size, seed=config.seed, train=False)
  for batch in batches:
    if remaining <= 0:
      break
    images = image_grid.to_uint8(batch['image'][:remaining])
    remaining -= len(images)
    yield images


def reference_stats_cached(config: ml_collections.ConfigDict, weights_path) -> bool:
  """Whether the real images' statistics for config and these weights are cached (so the data need not be read)."""
  dataset, split = reference_key(config)
  return reference_stats.reference_stats_path(dataset, split, config.data.image_size,
                                              inception_weights.weights_fingerprint(weights_path)).is_file()


def load_inception_reference(config: ml_collections.ConfigDict) -> InceptionReference:
  """Loads the Inception weights (eval.inception_weights, else the cache / download) and the real data's statistics."""
  path = inception_weights.find_or_download_weights(config.eval.inception_weights)
  extractor = inception.InceptionFeatureExtractor(inception_weights.load_inception_variables(path),
                                                  batch_size=int(config.eval.batch_size))
  weights_hash = inception_weights.weights_fingerprint(path)
  dataset, split = reference_key(config)
  cached = reference_stats.reference_stats_path(dataset, split, config.data.image_size, weights_hash)
  logging.info('Reference statistics: %s (%s)', cached, 'cached' if cached.is_file() else 'computing')
  stats = reference_stats.load_or_compute_reference_stats(
      dataset, split, config.data.image_size, weights_hash, images_fn=lambda: real_images(config),
      feature_fn=lambda batch: extractor(batch)['pool'], batch_size=int(config.eval.batch_size))
  return InceptionReference(extractor=extractor, reference=stats, weights_hash=weights_hash)


def check_eval_config(config: ml_collections.ConfigDict, num_samples: int, field: str) -> None:
  """Raises a one-line ValueError when the eval settings cannot give a score (too few samples, nothing to compute)."""
  if not config.eval.inception and config.data.name != 'digits':
    raise ValueError(f'eval.inception=False leaves nothing to score on data.name={config.data.name!r} (only digits '
                     'have a second metric): set --config.eval.inception=True.')
  # The Inception Score splits the samples into 10 parts; a Frechet distance needs a covariance.
  minimum = metrics.IS_SPLITS if config.eval.inception else 2
  if num_samples < minimum:
    raise ValueError(f'{field}={num_samples} is too few to score: use at least {minimum}.')
  if config.eval.inception and config.eval.num_real < 2:
    raise ValueError(f'eval.num_real={config.eval.num_real} is too few for reference statistics: use at least 2.')
  if config.eval.batch_size < 1:
    raise ValueError(f'eval.batch_size={config.eval.batch_size} must be positive: use e.g. 50.')


def evaluate_samples(images, labels, config: ml_collections.ConfigDict,
                     inception_reference: InceptionReference | None = None) -> dict:
  """Scores uint8 samples (N, H, W, C) with intended labels (N,) or None: FID / KID / IS and digits_* keys.

  Inception metrics only when config.eval.inception (loading the network if inception_reference is None).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f'samples must be uint8 (N, H, W, C), got {images.dtype} {images.shape}: convert with '
                     'image_grid.to_uint8.')
  result: dict = {'num_samples': int(images.shape[0])}
  if config.eval.inception:
    inception_reference = inception_reference or load_inception_reference(config)
    outputs = inception_reference.extractor(images)
    result.update(reference_stats.score_against_reference(outputs['pool'], outputs['logits_unbiased'],
                                                          inception_reference.reference))
    result['num_real'] = inception_reference.reference.num_images
  if config.data.name == 'digits':
    from pdm_jax.evaluation import digits_classifier  # trains a small sklearn MLP on first use (seconds)
    report = digits_classifier.digits_report(images, labels)
    result.update({f'digits_{key}': value for key, value in report.items()})
  return result


def generate_uint8(experiment: loop.Experiment, state, rng: jax.Array, generator
                   ) -> tuple[np.ndarray, np.ndarray | None]:
  """Samples with generator (generate.make_generator) from state's EMA / raw params: uint8 (N, H, W, C), ids (N,).

  ids are the intended classes of class-conditional models, the drawn prototypes of PDM, None otherwise.
  """
  variables = generate.sampling_variables(state, experiment.config.sample.use_ema)
  images, ids = generator(variables, rng)
  return image_grid.to_uint8(images), None if ids is None else np.asarray(ids)


def class_labels(experiment: loop.Experiment, ids: np.ndarray | None) -> np.ndarray | None:
  """The samples' classes, to score against: the ids of class-conditional models (prototype draws are not classes)."""
  return ids if experiment.model.kind.class_conditional else None


# Estimates biased by the number of samples (FID's bias falls as 1/n): their TensorBoard tags carry the count,
# eval/fid_1000, so a periodic estimate is never read as a 50,000-sample FID.
SAMPLE_COUNT_METRICS = ('fid', 'digits_frechet_distance')


def scalar_tags(scalars: dict[str, float], num_samples: int) -> dict[str, float]:
  """{metric: value} -> {'eval/<metric>' or, for SAMPLE_COUNT_METRICS, 'eval/<metric>_<num_samples>': value}."""
  return {f'eval/{key}_{num_samples}' if key in SAMPLE_COUNT_METRICS else f'eval/{key}': value
          for key, value in scalars.items()}


def _scalars(result: dict) -> dict[str, float]:
  """The numeric entries of a result (lists such as class counts dropped), as floats."""
  return {key: float(value) for key, value in result.items()
          if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores config.eval.num_samples samples of the latest checkpoint; writes <workdir>/eval/metrics.json and a grid."""
  check_eval_config(config, config.eval.num_samples, 'eval.num_samples')
  experiment, state = restore.restore_latest(config, workdir)
  try:
    generate.check_sample_config(experiment.model, experiment.schedule, config.sample)
    # Weights and reference statistics (reading the real data only if not cached) before sampling, so a missing
    # file stops the run before the long part.
    inception_reference = load_inception_reference(config) if config.eval.inception else None
    step = int(jax.device_get(state.step))
    generator = generate.make_generator(experiment.model, experiment.schedule, config, experiment.image_shape,
                                        experiment.mesh, num_samples=config.eval.num_samples)
    rng = jax.random.fold_in(loop.run_keys(config.seed)['sample'], step)
    images, ids = generate_uint8(experiment, state, rng, generator)
    result = evaluate_samples(images, class_labels(experiment, ids), config, inception_reference)
  finally:
    experiment.checkpointer.close()
  result.update(step=step, method=config.sample.method,
                num_steps=config.sample.num_steps or config.diffusion.num_timesteps)
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, EVAL_DIR)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, METRICS_FILE), 'w') as f:
      json.dump(result, f, indent=1, default=lambda value: np.asarray(value).tolist())
    image_grid.save_png(os.path.join(out_dir, 'samples.png'), image_grid.make_grid(images, ids, max_rows=10))
    logging.info('Evaluation of step %d (%d samples, %s): %s', step, len(images), config.sample.method,
                 json.dumps(_scalars(result)))
  return result


class PeriodicEvaluator:
  """A loop.train hook: scores eval.periodic_num_samples samples and writes eval/* scalars and a sample grid, and
  (given a workdir) appends the scalars to <workdir>/eval/periodic.jsonl."""

  def __init__(self, config: ml_collections.ConfigDict, writer: metric_writers.MetricWriter,
               workdir: str | None = None):
    check_eval_config(config, config.eval.periodic_num_samples, 'eval.periodic_num_samples')
    self.config, self.writer, self.workdir = config, writer, workdir
    # Loaded now, before training, so a missing weights file stops the run at once, not at the first evaluation.
    self.inception_reference = load_inception_reference(config) if config.eval.inception else None
    self._experiment, self._generator = None, None

  def __call__(self, experiment: loop.Experiment, state, step: int) -> dict:
    """Evaluates state at step; returns the result written (scalars as eval/<key>)."""
    if self._experiment is not experiment:
      # One compiled sampler for every periodic evaluation of this run.
      self._experiment = experiment
      self._generator = generate.make_generator(experiment.model, experiment.schedule, self.config,
                                                experiment.image_shape, experiment.mesh,
                                                num_samples=self.config.eval.periodic_num_samples)
    rng = jax.random.fold_in(loop.run_keys(self.config.seed)['sample'], step)
    images, ids = generate_uint8(experiment, state, rng, self._generator)
    result = evaluate_samples(images, class_labels(experiment, ids), self.config, self.inception_reference)
    if experiment.model.kind.prototype_memory:
      result.update(prototype_health.dataset_health(
          experiment.model, generate.sampling_variables(state, self.config.sample.use_ema), self.config))
    scalars = _scalars(result)
    self.writer.write_scalars(step, scalar_tags(scalars, len(images)))
    grid = image_grid.make_grid(images, ids, max_rows=10)
    self.writer.write_images(step, {f'eval/{experiment.model.kind.grid_name}': grid[None]})
    if self.workdir is not None and jax.process_index() == 0:
      os.makedirs(os.path.join(self.workdir, EVAL_DIR), exist_ok=True)
      with open(os.path.join(self.workdir, EVAL_DIR, PERIODIC_FILE), 'a') as f:
        f.write(json.dumps(dict(scalars, step=step)) + '\n')
    logging.info('Periodic evaluation at step %d: %s', step, json.dumps(scalars))
    return result
