"""Checks a run's config before any data is read or anything compiles: every field a user can get wrong stops the run
with one line that names the field and the fix (main.py prints it as `error: ...`)."""

import numbers

import ml_collections

from pdm_jax import data
from pdm_jax import diffusion
from pdm_jax import sampling
from pdm_jax.inference import generate
from pdm_jax.models import factory
from pdm_jax.training import prototype_classifier
from pdm_jax.training import train_step

# (field, smallest value, what the value means): integers a run needs at least this large.
_TRAIN_INTEGERS = (
    ('train.num_steps', 1, 'total optimisation steps'),
    ('train.batch_size', 1, 'global batch, split over all devices'),
    ('train.checkpoint_every', 1, 'steps between checkpoints'),
    ('train.keep_checkpoints', 1, 'checkpoints kept; 0 would keep none and lose the run'),
    ('train.log_every', 1, 'steps between metric writes'),
    ('train.warmup_steps', 0, 'learning-rate warmup steps'),
    ('eval.every_steps', 0, 'steps between periodic evaluations; 0: never'),
)
# (field, lower bound, whether the bound itself is allowed, upper bound (excluded) or None, an example): numbers.
_TRAIN_FLOATS = (
    ('train.learning_rate', 0.0, False, None, 'the peak learning rate, e.g. 1e-4'),
    ('train.weight_decay', 0.0, True, None, 'AdamW weight decay, e.g. 0'),
    ('train.grad_clip_norm', 0.0, False, None, 'the global-norm clip, e.g. 1.0'),
    ('train.end_learning_rate_factor', 0.0, True, None, 'final / peak learning rate, e.g. 0.05'),
    ('train.ema_decay', 0.0, True, 1.0, 'the EMA decay, e.g. 0.999'),
    ('train.label_dropout', 0.0, True, 1.0, 'the share of labels dropped for classifier-free guidance, e.g. 0.1'),
)


def _get(config: ml_collections.ConfigDict, path: str):
  value = config
  for part in path.split('.'):
    value = value[part]
  return value


def _check_integer(config, path: str, minimum: int, meaning: str) -> None:
  value = _get(config, path)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f'{path}={value!r} must be an integer >= {minimum} ({meaning}).')


def _check_float(config, path: str, low: float, low_allowed: bool, high: float | None, example: str) -> None:
  value = _get(config, path)
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
        and (value >= low if low_allowed else value > low) and (high is None or value < high))
  if not ok:
    bounds = ('>= ' if low_allowed else '> ') + str(low) + ('' if high is None else f' and < {high}')
    raise ValueError(f'{path}={value!r} must be a number {bounds}: {example}.')


def check_diffusion(config: ml_collections.ConfigDict) -> diffusion.Schedule:
  """The schedule of config.diffusion, after checking its names and numbers."""
  settings = config.diffusion
  _check_integer(config, 'diffusion.num_timesteps', 2, 'diffusion steps T')
  if settings.prediction_type not in diffusion.PREDICTION_TYPES:
    raise ValueError(f'diffusion.prediction_type={settings.prediction_type!r} is unknown: use one of '
                     f'{", ".join(diffusion.PREDICTION_TYPES)}.')
  if settings.loss_weighting not in diffusion.WEIGHTINGS:
    raise ValueError(f'diffusion.loss_weighting={settings.loss_weighting!r} is unknown: use one of '
                     f'{", ".join(diffusion.WEIGHTINGS)}.')
  if not 0 < settings.beta_start < settings.beta_end < 1:
    raise ValueError(f'diffusion.beta_start={settings.beta_start} and beta_end={settings.beta_end} must satisfy '
                     '0 < beta_start < beta_end < 1 (the reference: 1e-4 and 0.02).')
  return diffusion.make_schedule(settings.schedule, settings.num_timesteps, settings.beta_start, settings.beta_end)


def check(config: ml_collections.ConfigDict, mode: str) -> None:
  """Raises a one-line ValueError for the first wrong field that `mode` ('train' | 'sample' | 'eval') uses.

  Sampling and evaluation check the model's own settings (sample.label in range) once the checkpoint says what the
  model is; training checks them here, from the config and data.describe.
  """
  schedule = check_diffusion(config)
  sampling.check_options(schedule, config.sample.method, config.sample.num_steps)
  if mode != 'train':
    return
  for path, minimum, meaning in _TRAIN_INTEGERS:
    _check_integer(config, path, minimum, meaning)
  for path, low, low_allowed, high, example in _TRAIN_FLOATS:
    _check_float(config, path, low, low_allowed, high, example)
  train_step.check_grad_accum_steps(config.train.batch_size, config.train.grad_accum_steps)
  prototype_classifier.check_config(config)
  info = data.describe(config.data)
  model = factory.build_model(config.model, image_size=info.image_size, num_channels=info.num_channels,
                              num_classes=info.num_classes, null_class=factory.has_null_class(config))
  generate.check_sample_config(model, schedule, config.sample)
  _check_sinkhorn_rows(config, model)


def _check_sinkhorn_rows(config: ml_collections.ConfigDict, model) -> None:
  """A balanced assignment of fewer rows than prototypes cannot give every prototype a share: ask for a queue."""
  if model.kind.class_conditional or not model.kind.prototype_memory:
    return
  if config.model.prototype_assignment != 'sinkhorn':
    return
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  rows = micro_batch + config.model.prototype_queue_size
  if rows < model.num_prototypes:
    raise ValueError(f'model.prototype_assignment=sinkhorn balances {rows} features per step (micro-batch '
                     f'{micro_batch} + model.prototype_queue_size={config.model.prototype_queue_size}) over '
                     f'{model.num_prototypes} prototypes: raise model.prototype_queue_size to at least '
                     f'{2 * model.num_prototypes - micro_batch}.')
