"""Checks a run's config before any data is read or anything compiles: every field a user can get wrong stops the run
with one line that names the field and the fix (main.py prints it as `error: ...`)."""

import numbers

import ml_collections

from pdm_jax import data
from pdm_jax import diffusion
from pdm_jax import sampling
from pdm_jax.evaluation import inception_weights
from pdm_jax.inference import evaluate
from pdm_jax.inference import generate
from pdm_jax.models import factory
from pdm_jax.models import kinds
from pdm_jax.training import checkpoints
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


def check(config: ml_collections.ConfigDict, mode: str, workdir: str | None = None) -> None:
  """Raises a one-line error for the first wrong field that `mode` (one of run.MODES) uses, then for what it needs
  and lacks: a checkpoint in workdir (modes other than train), then every missing asset at once.

  Sampling and evaluation check the model's own settings (sample.label in range) once the checkpoint says what the
  model is; training checks them here, from the config and data.describe.
  """
  schedule = check_diffusion(config)
  sampling.check_options(schedule, config.sample.method, config.sample.num_steps, prefix='sample.')
  if mode == 'inspect':
    check_inspect(config)
  if mode == 'eval':
    evaluate.check_eval_config(config, config.eval.num_samples, 'eval.num_samples')
  if mode != 'train':
    if workdir is not None:
      checkpoints.check_has_checkpoint(workdir)
    check_assets(config, mode)
    return
  for path, minimum, meaning in _TRAIN_INTEGERS:
    _check_integer(config, path, minimum, meaning)
  for path, low, low_allowed, high, example in _TRAIN_FLOATS:
    _check_float(config, path, low, low_allowed, high, example)
  train_step.check_grad_accum_steps(config.train.batch_size, config.train.grad_accum_steps)
  if config.train.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f'train.on_nonfinite={config.train.on_nonfinite!r} is unknown: use stop (end the run at the '
                     'step, the last good checkpoint kept) or skip (drop that update and go on).')
  prototype_classifier.check_config(config)
  info = data.describe(config.data)
  model = factory.build_model(config.model, image_size=info.image_size, num_channels=info.num_channels,
                              num_classes=info.num_classes, null_class=factory.has_null_class(config))
  generate.check_sample_config(model, schedule, config.sample)
  _check_sinkhorn_rows(config, model)
  check_assets(config, mode)


def missing_assets(config: ml_collections.ConfigDict, mode: str) -> list[str]:
  """What `mode` will need but cannot find (the data, the Inception weights), each with how to provide it.

  Training reads the data (and the weights when it evaluates periodically); eval needs the weights, and the data
  only when the real images' statistics are not cached yet; sample needs neither.
  """
  problems = []
  needs_weights = config.eval.inception and (mode == 'eval' or (mode == 'train' and config.eval.every_steps > 0))
  weights = None
  if needs_weights:
    try:
      weights = inception_weights.find_or_download_weights(config.eval.inception_weights)
    except FileNotFoundError as e:
      problems.append(str(e))
  needs_data = mode in ('train', 'inspect')
  if mode == 'eval' and config.eval.inception:
    needs_data = weights is None or not evaluate.reference_stats_cached(config, weights)
  if needs_data:
    try:
      data.check_available(config.data)
    except (FileNotFoundError, ValueError) as e:
      problems.append(str(e))
  return problems


def check_assets(config: ml_collections.ConfigDict, mode: str) -> None:
  """One FileNotFoundError listing everything missing_assets finds, so one round of fetching provides it all."""
  problems = missing_assets(config, mode)
  if len(problems) == 1:
    raise FileNotFoundError(problems[0])
  if problems:
    raise FileNotFoundError(f'{len(problems)} things are missing: '
                            + ' '.join(f'({i}) {p}' for i, p in enumerate(problems, 1)))


def check_inspect(config: ml_collections.ConfigDict) -> None:
  """--mode=inspect pictures a prototype memory: refuse other model kinds and empty inspect.* settings."""
  kind = kinds.get(config.model.type)
  if not kind.prototype_memory:
    raise ValueError(f'--mode=inspect needs a model with prototypes (model.type pdm or spdm), not '
                     f'model.type={kind.name}: use --mode=sample or --mode=eval for it.')
  _check_integer(config, 'inspect.max_rows', 1, 'prototypes sampled, one grid row each')
  _check_integer(config, 'inspect.samples_per_prototype', 1, 'samples drawn with each of those prototypes')


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
