"""Entry points behind main.py: train (then sample), sample, evaluate (FID / KID / IS) or inspect (the prototypes of)
the latest checkpoint."""

import functools
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from pdm_jax import api
from pdm_jax import image_grid
from pdm_jax import preflight
from pdm_jax import workdir_lock
from pdm_jax.inference import evaluate as evaluate_lib
from pdm_jax.inference import generate
from pdm_jax.inference import inspection
from pdm_jax.inference import prototype_health
from pdm_jax.inference import restore
from pdm_jax.inference import run_page
from pdm_jax.training import loop
from pdm_jax.training import prototype_classifier

MODES = ('train', 'sample', 'eval', 'inspect')


def write_samples(experiment: loop.Experiment, state, workdir: str, tag: str = 'final',
                  extra_report: dict | None = None) -> tuple[dict, np.ndarray, np.ndarray | None]:
  """Samples config.sample.num_samples images, writes <workdir>/samples/<tag>.npz, .png and a report (with
  extra_report's entries, e.g. the prototype health).

  Returns the report, the uint8 (N, H, W, C) samples and their condition ids (N,) (classes or prototypes) or None.
  """
  config = experiment.config
  step = int(jax.device_get(state.step))
  rng = jax.random.fold_in(loop.run_keys(config.seed)['sample'], step)
  variables = generate.sampling_variables(state, config.sample.use_ema)
  images, ids = generate.generate(experiment.model, variables, experiment.schedule, config,
                                  experiment.image_shape, rng, experiment.mesh)
  images = image_grid.to_uint8(images)
  report: dict = dict(step=step, num_samples=len(images), method=config.sample.method,
                      num_steps=config.sample.num_steps or config.diffusion.num_timesteps, **(extra_report or {}))
  if jax.process_index() != 0:
    return report, images, ids
  out_dir = os.path.join(workdir, 'samples')
  os.makedirs(out_dir, exist_ok=True)
  arrays = {'images': images}
  kind = experiment.model.kind
  class_conditional = kind.class_conditional
  if ids is not None:
    arrays[kind.sample_ids_name] = ids
  np.savez_compressed(os.path.join(out_dir, f'{tag}.npz'), **arrays)
  grid = image_grid.make_grid(images, ids)  # a row per class or prototype
  image_grid.save_png(os.path.join(out_dir, f'{tag}.png'), grid)
  if config.data.name == 'digits':
    from pdm_jax.evaluation import digits_classifier  # sklearn-only; digits runs have it
    digits = digits_classifier.digits_report(images, ids if class_conditional else None)
    report.update(digits)
    logging.info('Digits check of %d samples: %s', len(images), json.dumps(digits))
  with open(os.path.join(out_dir, f'{tag}_report.json'), 'w') as f:
    json.dump(report, f, indent=1, default=lambda v: np.asarray(v).tolist())
  logging.info('Wrote %d samples to %s', len(images), os.path.join(out_dir, f'{tag}.npz'))
  return report, images, ids


def _entry_point(mode: str):
  """Wraps a (config, workdir) entry point: checks the config for `mode` first, then holds the workdir's lock."""
  def wrap(fn):
    @functools.wraps(fn)
    def run(config: ml_collections.ConfigDict, workdir: str):
      preflight.check(config, mode, workdir)
      # Processes of one multi-host run share the workdir: the first process speaks for the run.
      with workdir_lock.WorkdirLock(workdir, mode, enabled=jax.process_index() == 0):
        return fn(config, workdir)
    return run
  return wrap


@_entry_point('train')
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming; evaluating every eval.every_steps when set), then writes the final samples.

  ProtoDiffusion first trains (or restores) its prototype classifier, whose centres start the class embedding.
  """
  api.save_config(config, workdir)  # so pdm_jax.load(workdir) needs nothing else
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  periodic = []
  if config.eval.every_steps:
    periodic.append((config.eval.every_steps, evaluate_lib.PeriodicEvaluator(config, writer, workdir)))
  centres = prototype_classifier.train_stage_one(
      config, workdir, rng=loop.run_keys(config.seed)['prototype_classifier'], writer=writer)
  experiment, state = loop.train(config, workdir, writer=writer, periodic=periodic, class_centres=centres)
  health = None
  if experiment.model.kind.prototype_memory:
    health = prototype_health.dataset_health(
        experiment.model, generate.sampling_variables(state, config.sample.use_ema), config)
    logging.info('Prototype health over the dataset: %s', json.dumps(health))
  report, images, ids = write_samples(experiment, state, workdir, extra_report=health)
  if jax.process_index() == 0:
    grid = image_grid.make_grid(images, ids, max_rows=10)
    writer.write_images(int(jax.device_get(state.step)), {experiment.model.kind.grid_name: grid[None]})
  writer.write_scalars(int(jax.device_get(state.step)),
                       {f'samples/{k}': v for k, v in report.items() if isinstance(v, (int, float))})
  writer.close()
  experiment.checkpointer.close()
  run_page.write(workdir)
  return report


@_entry_point('sample')
def sample(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes samples from the latest checkpoint in workdir with the configured sampler; needs no training data."""
  experiment, state = restore.restore_latest(config, workdir)
  try:
    generate.check_sample_config(experiment.model, experiment.schedule, config.sample)
    report, _, _ = write_samples(experiment, state, workdir)
  finally:
    experiment.checkpointer.close()
  run_page.write(workdir)
  return report


@_entry_point('eval')
def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores eval.num_samples samples of the latest checkpoint; writes <workdir>/eval/metrics.json (FID, KID, IS)."""
  result = evaluate_lib.evaluate_checkpoint(config, workdir)
  run_page.write(workdir)
  return result


@_entry_point('inspect')
def inspect(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pictures the prototype memory (pdm / spdm) of the latest checkpoint in <workdir>/inspect/; reads the dataset."""
  report = inspection.inspect_checkpoint(config, workdir)
  run_page.write(workdir)
  return report
