"""--mode=inspect: what a prototype memory (pdm / s-PDM) has learned, as pictures and numbers in <workdir>/inspect/.

  features_pca.png           f_phi features of the dataset's images in their first two principal components,
                             coloured by class (by nearest prototype when the data has no labels), the prototypes
                             projected into the same plane
  samples_per_prototype.png  one row of samples per prototype, each sample drawn with that prototype fixed
  prototype_usage.png        the share of the images nearest each prototype, against the 1% in-use line
  prototype_similarity.png   the K x K cosine similarity of the prototypes
  report.json                prototype health, the shares, and on digits how much each prototype's samples are one digit
"""

import json
import os

import jax
from jax.experimental import multihost_utils
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
import numpy as np
from absl import logging

from pdm_jax import image_grid
from pdm_jax.inference import generate
from pdm_jax.inference import prototype_health
from pdm_jax.inference import restore
from pdm_jax.training import loop

INSPECT_DIR = 'inspect'
_MAX_LEGEND_CLASSES = 20  # beyond this a legend is unreadable: colours become a continuous scale
_MAX_TICKS = 30


def pca_2d(features: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Fits a 2-D PCA on (N, D) features and projects them and (M, D) points (e.g. the prototypes) into its plane.

  Returns ((N, 2), (M, 2), (2,) share of the features' variance on each axis). Each axis is signed so that its
  largest loading is positive (SVD signs are otherwise arbitrary); with D < 2 the missing axis is all zeros.
  """
  features = np.asarray(features, np.float64)
  points = np.asarray(points, np.float64)
  if features.ndim != 2 or features.shape[0] < 2 or points.ndim != 2 or points.shape[1] != features.shape[1]:
    raise ValueError(f'PCA needs (N >= 2, D) features and (M, D) points, got {features.shape} and {points.shape}: '
                     'pass at least two feature rows of the points\' width.')
  mean = features.mean(axis=0)
  _, singular_values, axes = np.linalg.svd(features - mean, full_matrices=False)
  axes, variances = axes[:2], singular_values[:2] ** 2
  axes = axes * np.where(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)] < 0, -1.0, 1.0)[:, None]
  total = np.sum(singular_values ** 2)
  explained = variances / total if total > 0 else np.zeros_like(variances)
  if len(axes) < 2:
    axes = np.concatenate([axes, np.zeros((2 - len(axes), features.shape[1]))])
    explained = np.concatenate([explained, np.zeros(2 - len(explained))])
  return (features - mean) @ axes.T, (points - mean) @ axes.T, explained


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
  """(K, D) vectors -> (K, K) cosine similarities (a zero vector is similar to nothing, itself included)."""
  vectors = np.asarray(vectors, np.float64)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  unit = vectors / np.where(norms > 0, norms, 1.0)
  return unit @ unit.T


def prototype_rows(num_prototypes: int, max_rows: int) -> np.ndarray:
  """The (R,) prototype ids to sample, R = min(K, max_rows): all of them, or max_rows spread evenly over 0..K-1."""
  if num_prototypes <= max_rows:
    return np.arange(num_prototypes)
  # Spacing (K - 1) / (max_rows - 1) > 1, so the rounded ids are distinct; the first and the last are both shown.
  return np.round(np.linspace(0, num_prototypes - 1, max_rows)).astype(np.int64)


def majority_and_purity(predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(R, n) predicted classes of n samples per row -> ((R,) majority class, (R,) its share of the row).

  Ties go to the smaller class.
  """
  predictions = np.asarray(predictions)
  if predictions.ndim != 2 or predictions.shape[1] == 0:
    raise ValueError(f'predictions must be (rows, samples per row) with samples, got shape {predictions.shape}.')
  counts = np.stack([np.bincount(row, minlength=int(predictions.max()) + 1) for row in predictions])
  majority = np.argmax(counts, axis=1)
  return majority, counts[np.arange(len(counts)), majority] / predictions.shape[1]


def sample_with_ids(experiment: loop.Experiment, variables: dict, config: ml_collections.ConfigDict,
                    ids: np.ndarray, rng: jax.Array) -> np.ndarray:
  """(N, H, W, C) float images in [-1, 1]; image i is drawn with condition ids[i] (prototype, or class for s-PDM)
  fixed along its whole trajectory, in batches of sample.batch_size split over the mesh."""
  mesh = experiment.mesh
  # The batch must split over the devices: round it up to a multiple of the mesh size.
  batch = -(-min(config.sample.batch_size, len(ids)) // mesh.size) * mesh.size
  # No redraw_prototypes: a row shows one prototype, even for a model sampled with redraw_prototype_each_step.
  sampler = generate.make_sampler(experiment.model, experiment.schedule, config.sample,
                                  config.diffusion.prediction_type, (batch, *experiment.image_shape), mesh)
  outputs = []
  for index, start in enumerate(range(0, len(ids), batch)):
    chunk = np.resize(np.asarray(ids[start:start + batch], np.int32), (batch,))
    images = sampler(variables, jax.random.fold_in(rng, index), generate.shard_ids(chunk, mesh))
    outputs.append(np.asarray(multihost_utils.process_allgather(images, tiled=True))[:len(ids) - start])
  images = np.concatenate(outputs)
  if not np.isfinite(images).all():
    raise FloatingPointError('samples per prototype are not finite (the network output was not): inspect another '
                             'checkpoint, or use another sample.method.')
  return images


def _figure(width: float, height: float) -> Figure:
  """A figure drawn by the Agg canvas (no pyplot: no global figure state, no display needed)."""
  figure = Figure(figsize=(width, height), dpi=100, layout='constrained')
  FigureCanvasAgg(figure)
  return figure


def _plot_features(path: str, points: np.ndarray, prototype_points: np.ndarray, colours: np.ndarray,
                   colour_name: str, explained: np.ndarray, title: str) -> None:
  figure = _figure(7.5, 6)
  axes = figure.add_subplot()
  values = np.unique(colours)
  if len(values) <= _MAX_LEGEND_CLASSES:
    palette = matplotlib.colormaps['tab10' if len(values) <= 10 else 'tab20']
    for index, value in enumerate(values):
      mask = colours == value
      axes.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6, color=palette(index),
                   label=f'{colour_name} {value}')
  else:
    scatter = axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, c=colours, cmap='turbo')
    figure.colorbar(scatter, ax=axes, label=colour_name)
  axes.scatter(prototype_points[:, 0], prototype_points[:, 1], marker='X', s=140, color='black', edgecolors='white',
               linewidths=1.0, label='prototypes', zorder=3)
  if len(prototype_points) <= _MAX_TICKS:
    for k, (x, y) in enumerate(prototype_points):
      axes.annotate(str(k), (x, y), xytext=(5, 5), textcoords='offset points', fontsize=9, weight='bold', zorder=4)
  axes.set_xlabel(f'PC 1 ({explained[0]:.0%} of the variance)')
  axes.set_ylabel(f'PC 2 ({explained[1]:.0%} of the variance)')
  axes.set_title(title)
  legend = axes.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
  for handle in legend.legend_handles:
    handle.set_sizes([30])  # legible class dots
  legend.legend_handles[-1].set_sizes([90])  # the prototypes' marker, as large as its white edge needs
  figure.savefig(path)


def _plot_samples(path: str, images: np.ndarray, row_ids: np.ndarray, row_labels: list[str], title: str) -> None:
  """Images (R * n, H, W, C) uint8, n per row in row order, as a grid with each row's label on its left."""
  per_row = len(images) // len(row_ids)
  grid = image_grid.make_grid(images, np.repeat(np.arange(len(row_ids)), per_row), columns=per_row)
  height = images.shape[1]
  # 45 px per image at least (at 100 dpi), more for larger images: none is shown smaller than its own pixels.
  inches = max(0.45, height / 100)
  figure = _figure(max(6.0, per_row * inches + 3.0), len(row_ids) * inches + 1.0)
  axes = figure.add_subplot()
  axes.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  padding = 1  # make_grid's default
  axes.set_yticks([padding + r * (height + padding) + height / 2 for r in range(len(row_ids))], row_labels,
                  fontsize=8)
  axes.set_xticks([])
  figure.suptitle(title, fontsize=10)
  figure.savefig(path)


def _plot_usage(path: str, shares: np.ndarray, num_images: int, title: str) -> None:
  num_prototypes = len(shares)
  in_use = shares >= prototype_health.IN_USE_SHARE
  figure = _figure(max(6.0, 0.25 * num_prototypes + 2), 4.5)
  axes = figure.add_subplot()
  axes.bar(np.arange(num_prototypes), shares, color=np.where(in_use, 'tab:blue', 'tab:gray'))
  axes.axhline(prototype_health.IN_USE_SHARE, color='tab:red', linestyle='--',
               label=f'in use: >= {prototype_health.IN_USE_SHARE:.0%} of the images')
  axes.axhline(1.0 / num_prototypes, color='black', linestyle=':', label='uniform: 1/K')
  if num_prototypes <= _MAX_TICKS:
    axes.set_xticks(np.arange(num_prototypes))
  axes.set_xlabel('prototype')
  axes.set_ylabel('share of the images')
  axes.set_title(f'{title}: {int(in_use.sum())} of {num_prototypes} prototypes in use ({num_images} images)')
  axes.legend(fontsize=8)
  figure.savefig(path)


def _plot_similarity(path: str, similarity: np.ndarray, title: str) -> None:
  figure = _figure(6.5, 5.5)
  axes = figure.add_subplot()
  image = axes.imshow(similarity, cmap='RdBu_r', vmin=-1, vmax=1, interpolation='nearest')
  figure.colorbar(image, ax=axes, label='cosine similarity')
  if len(similarity) <= _MAX_TICKS:
    axes.set_xticks(np.arange(len(similarity)))
    axes.set_yticks(np.arange(len(similarity)))
  axes.set_xlabel('prototype')
  axes.set_ylabel('prototype')
  axes.set_title(title)
  figure.savefig(path)


def inspect_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes <workdir>/inspect/ (four PNGs and report.json) for the latest pdm / spdm checkpoint; returns the report.

  Reads the dataset (eval.num_real images) for the features, so its data errors surface before any sampling.
  """
  experiment, state = restore.restore_latest(config, workdir)
  try:
    model = experiment.model
    generate.check_guidance(model, config.sample)
    step = int(jax.device_get(state.step))
    variables = generate.sampling_variables(state, config.sample.use_ema)
    features, nearest, labels = prototype_health.dataset_assignments(model, variables, config)
    prototypes = np.asarray(jax.device_get(variables['params']['memory']['prototypes']))
    num_prototypes = len(prototypes)
    rows = prototype_rows(num_prototypes, config.inspect.max_rows)
    per_row = int(config.inspect.samples_per_prototype)
    # The key --mode=sample uses at this step: derived from the config seed.
    rng = jax.random.fold_in(loop.run_keys(config.seed)['sample'], step)
    images = image_grid.to_uint8(sample_with_ids(experiment, variables, config, np.repeat(rows, per_row), rng))
  finally:
    experiment.checkpointer.close()

  shares = np.bincount(nearest, minlength=num_prototypes) / len(nearest)
  report: dict = dict(step=step, model_type=model.kind.name, num_prototypes=num_prototypes,
                      **prototype_health.health(nearest, num_prototypes, labels),
                      prototype_shares=shares.tolist(), sampled_prototypes=rows.tolist(),
                      samples_per_prototype=per_row, sample_method=config.sample.method,
                      sample_num_steps=config.sample.num_steps or config.diffusion.num_timesteps)
  similarity = cosine_similarity(prototypes)
  # The compactness loss pulls this towards 0; near 1 means two prototypes became one.
  report['prototype_max_abs_cosine'] = float(np.max(np.abs(similarity - np.eye(num_prototypes)), initial=0.0))
  if jax.process_index() != 0:
    return report
  condition = 'class' if model.kind.class_conditional else 'prototype'
  row_labels = [f'{condition} {k}' for k in rows]
  if config.data.name == 'digits':
    from pdm_jax.evaluation import digits_classifier  # sklearn-only; digits runs have it
    majority, purity = majority_and_purity(digits_classifier.predict_digits(images).reshape(len(rows), per_row))
    report['digits_per_prototype'] = [dict(prototype=int(k), majority_digit=int(d), purity=float(p))
                                      for k, d, p in zip(rows, majority, purity)]
    report['mean_purity'] = float(np.mean(purity))
    row_labels = [f'{label}: {d} ({p:.0%})' for label, d, p in zip(row_labels, majority, purity)]

  out_dir = os.path.join(workdir, INSPECT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  name = f'{model.kind.name} step {step}'
  points, prototype_points, explained = pca_2d(features, prototypes)
  report['pca_explained_variance'] = explained.tolist()
  colour_name = 'class' if labels is not None else 'nearest prototype'
  _plot_features(os.path.join(out_dir, 'features_pca.png'), points, prototype_points,
                 labels if labels is not None else nearest, colour_name, explained,
                 f'{name}: f_phi features of {len(features)} images by {colour_name}')
  row_legend = '\nrow label: majority digit of its samples (their share)' if 'mean_purity' in report else ''
  _plot_samples(os.path.join(out_dir, 'samples_per_prototype.png'), images, rows, row_labels,
                f'{name}: {per_row} samples per fixed {condition}{row_legend}')
  _plot_usage(os.path.join(out_dir, 'prototype_usage.png'), shares, len(nearest), name)
  _plot_similarity(os.path.join(out_dir, 'prototype_similarity.png'), similarity,
                   f'{name}: cosine similarity of the {num_prototypes} prototypes\n'
                   f'largest off the diagonal: {report["prototype_max_abs_cosine"]:.3f} (absolute value)')
  with open(os.path.join(out_dir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
  logging.info('Wrote the prototype inspection of step %d to %s: %s', step, out_dir,
               json.dumps({k: v for k, v in report.items() if isinstance(v, (int, float))}))
  return report
