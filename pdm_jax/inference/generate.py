"""Sampling from a trained model: conditioning ids per sample, the compiled sampler, sharded batches."""

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdm_jax import diffusion
from pdm_jax import distributed
from pdm_jax import sampling
from pdm_jax import xla_options
from pdm_jax.training import sharding


def sample_choice(model, sample_config: ml_collections.ConfigDict) -> int | None:
  """The one class (sample.label) or prototype (sample.prototype, PDM) every sample is drawn from, or None.

  A one-line ValueError when the field set does not fit the model's conditioning.
  """
  label, prototype = sample_config.label, sample_config.get('prototype', None)
  kind = model.kind
  if kind.conditioning == 'prototype':
    if label is not None:
      raise ValueError(f'sample.label={label}, but model.type={kind.name} is conditioned on learned prototypes, not '
                       'classes: use sample.prototype=K instead.')
    return prototype
  if prototype is not None:
    raise ValueError(f'sample.prototype={prototype}, but model.type={kind.name} has no freely drawn prototypes: '
                     + ('use sample.label.' if kind.class_conditional else 'leave it unset.'))
  return label


def check_sample_config(model, schedule: diffusion.Schedule, sample_config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for sample.* settings that sampling would refuse, so a run can stop before training."""
  sampling.check_options(schedule, sample_config.method, sample_config.num_steps, prefix='sample.')
  for field in ('num_samples', 'batch_size'):
    if sample_config[field] < 1:
      raise ValueError(f'sample.{field}={sample_config[field]} must be at least 1.')
  model.kind.check_choice(sample_choice(model, sample_config), model.num_prototypes)
  check_guidance(model, sample_config)


def check_guidance(model, sample_config: ml_collections.ConfigDict) -> None:
  """sample.guidance_scale must be a number >= 0, and other than 1 only for a model with a null class."""
  scale = sample_config.get('guidance_scale', 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
    raise ValueError(f'sample.guidance_scale={scale!r} must be a number >= 0 (1: no guidance).')
  if scale != 1.0 and not model.null_class:
    raise ValueError(f'sample.guidance_scale={scale} needs a class-conditional model trained with '
                     'train.label_dropout > 0 (a null class); this one has none: set sample.guidance_scale=1.')


def make_sampler(model, schedule: diffusion.Schedule, sample_config: ml_collections.ConfigDict,
                 prediction_type: str, shape: tuple[int, ...], mesh, redraw_prototypes: bool = False):
  """A jitted (variables, rng, ids (N,)) -> (N, H, W, C) float images; the batch is split over the mesh."""
  num_steps = sample_config.num_steps
  conditional = model.kind.conditional
  guidance_scale = float(sample_config.get('guidance_scale', 1.0))

  def run(variables, rng, ids):
    noise_rng, redraw_rng = jax.random.split(rng)

    def eps_fn(x_t, t):
      step_ids = ids
      if redraw_prototypes:
        # The reference's behaviour: a fresh random prototype per sample at every step.
        step_ids = jax.random.randint(jax.random.fold_in(redraw_rng, jnp.max(t).astype(jnp.int32)),
                                      ids.shape, 0, model.num_prototypes)
      output, _ = model.apply(variables, x_t, t, prototype_ids=step_ids if conditional else None)
      return diffusion.to_epsilon(schedule, output, x_t, t, prediction_type)

    if guidance_scale != 1.0:
      def eps_null(x_t, t):
        output, _ = model.apply(variables, x_t, t, prototype_ids=ids,
                                drop_condition=jnp.ones(ids.shape, bool))
        return diffusion.to_epsilon(schedule, output, x_t, t, prediction_type)
      eps_fn = sampling.classifier_free_guidance(eps_fn, eps_null, guidance_scale)

    return sampling.sample(eps_fn, schedule, shape, noise_rng, method=sample_config.method, num_steps=num_steps)

  data = sharding.batch_sharded(mesh)
  return jax.jit(run, in_shardings=(sharding.replicated(mesh), sharding.replicated(mesh), data), out_shardings=data,
                 compiler_options=xla_options.compiler_options())


def shard_ids(ids: np.ndarray, mesh) -> jax.Array:
  """(N,) ids, the same on every process -> a global array split over the mesh, as the sampler takes them.

  jit refuses numpy input for a split argument once there are several processes: each process gives its devices'
  rows.
  """
  return jax.make_array_from_callback(ids.shape, sharding.batch_sharded(mesh), lambda rows: ids[rows])


def make_generator(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                   image_shape: tuple[int, int, int], mesh, num_samples: int | None = None,
                   redraw_prototypes: bool | None = None):
  """A reusable (variables, rng, ids=None) -> (images (N, H, W, C) in [-1, 1], ids (N,) or None); compiles the
  sampler once.

  N is num_samples (default config.sample.num_samples); batches of config.sample.batch_size split over the mesh.
  ids (N,) fixes each sample's class or prototype; by default they are drawn as the model's kind draws them.
  redraw_prototypes: None follows config.model.redraw_prototype_each_step (PDM only).
  """
  sample_config = config.sample
  num_samples = sample_config.num_samples if num_samples is None else int(num_samples)
  if num_samples < 1:
    raise ValueError(f'cannot generate {num_samples} samples: ask for at least 1.')
  if redraw_prototypes is None:
    redraw_prototypes = model.kind.conditioning == 'prototype' and config.model.redraw_prototype_each_step
  # The batch must split over the devices: round it up to a multiple of the mesh size.
  batch = -(-min(sample_config.batch_size, num_samples) // mesh.size) * mesh.size
  sampler = make_sampler(model, schedule, sample_config, config.diffusion.prediction_type,
                         (batch, *image_shape), mesh, redraw_prototypes=redraw_prototypes)

  compiled = []

  def run(variables, rng: jax.Array, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    ids_rng, loop_rng = jax.random.split(rng)
    if ids is None:
      ids = model.kind.draw_conditions(num_samples, model.num_prototypes, ids_rng,
                                       sample_choice(model, sample_config))
    elif len(ids) != num_samples:
      raise ValueError(f'got {len(ids)} condition ids for a generator of {num_samples} samples: pass one per sample.')
    outputs = []
    for index, start in enumerate(range(0, num_samples, batch)):
      chunk = np.zeros((batch,), np.int32) if ids is None else np.resize(ids[start:start + batch], (batch,))
      args = (variables, jax.random.fold_in(loop_rng, index), shard_ids(chunk.astype(np.int32), mesh))
      if not compiled:  # every batch runs this one program: compile it once (in step with the other processes)
        compiled.append(distributed.compile_together(sampler, *args, what='sampler'))
      images = compiled[0](*args)
      # On several hosts each holds only its shards: gather the whole batch (a plain copy on one host).
      outputs.append(np.asarray(multihost_utils.process_allgather(images, tiled=True))[:num_samples - start])
      if not np.isfinite(outputs[-1]).all():
        hint = ('the probability-flow solver did not reach the data (non-finite network output, or its step limit)'
                if sample_config.method == 'pf' else 'the network output was not finite')
        raise FloatingPointError(f'samples of batch {index} are not finite: {hint}; sample from another checkpoint, '
                                 'or with another sample.method.')
    return np.concatenate(outputs), ids

  return run


def generate(model, variables, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
             image_shape: tuple[int, int, int], rng: jax.Array, mesh, num_samples: int | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
  """num_samples (default config.sample.num_samples) images in [-1, 1] (N, H, W, C) and their ids (None for ddpm)."""
  return make_generator(model, schedule, config, image_shape, mesh, num_samples)(variables, rng)


def sampling_variables(state, use_ema: bool) -> dict:
  """The variables a sampler applies: EMA (or raw) params plus BatchNorm statistics."""
  variables = {'params': state.ema_params if use_ema else state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables
