"""Sampling from a trained model: conditioning ids per sample, the compiled sampler, sharded batches."""

from typing import Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdm_jax import diffusion
from pdm_jax import sampling
from pdm_jax.models import pdm
from pdm_jax.training import sharding


def conditioning_ids(model, num_samples: int, rng: jax.Array, label: Optional[int] = None
                     ) -> Optional[np.ndarray]:
  """(num_samples,) ids: classes (balanced, or all `label`) for spdm / cddpm, uniform prototypes for pdm."""
  if model.model_type == 'ddpm':
    return None
  count = model.num_prototypes
  if model.model_type == 'pdm':
    return np.asarray(jax.random.randint(rng, (num_samples,), 0, count), np.int32)
  if label is None:
    return (np.arange(num_samples) % count).astype(np.int32)
  if not 0 <= label < count:
    raise ValueError(f'sample.label={label} is out of range: the model has classes 0..{count - 1}.')
  return np.full((num_samples,), label, np.int32)


def make_sampler(model, schedule: diffusion.Schedule, sample_config: ml_collections.ConfigDict,
                 prediction_type: str, shape: tuple[int, ...], mesh, redraw_prototypes: bool = False):
  """A jitted (variables, rng, ids (N,)) -> (N, H, W, C) float images; the batch is split over the mesh."""
  num_steps = sample_config.num_steps
  conditional = model.model_type != 'ddpm'

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

    return sampling.sample(eps_fn, schedule, shape, noise_rng, method=sample_config.method, num_steps=num_steps)

  data = sharding.batch_sharded(mesh)
  return jax.jit(run, in_shardings=(sharding.replicated(mesh), sharding.replicated(mesh), data), out_shardings=data)


def make_generator(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                   image_shape: tuple[int, int, int], mesh, num_samples: Optional[int] = None):
  """A reusable (variables, rng) -> (images (N, H, W, C) in [-1, 1], ids (N,) or None); compiles the sampler once.

  N is num_samples (default config.sample.num_samples); batches of config.sample.batch_size split over the mesh.
  """
  sample_config = config.sample
  num_samples = sample_config.num_samples if num_samples is None else int(num_samples)
  if num_samples < 1:
    raise ValueError(f'cannot generate {num_samples} samples: ask for at least 1.')
  # The batch must split over the devices: round it up to a multiple of the mesh size.
  batch = -(-min(sample_config.batch_size, num_samples) // mesh.size) * mesh.size
  sampler = make_sampler(model, schedule, sample_config, config.diffusion.prediction_type,
                         (batch, *image_shape), mesh,
                         redraw_prototypes=model.model_type == 'pdm' and config.model.redraw_prototype_each_step)

  def run(variables, rng: jax.Array) -> tuple[np.ndarray, Optional[np.ndarray]]:
    ids_rng, loop_rng = jax.random.split(rng)
    ids = conditioning_ids(model, num_samples, ids_rng, sample_config.label)
    outputs = []
    for index, start in enumerate(range(0, num_samples, batch)):
      chunk = np.zeros((batch,), np.int32) if ids is None else np.resize(ids[start:start + batch], (batch,))
      images = sampler(variables, jax.random.fold_in(loop_rng, index), chunk)
      # On several hosts each holds only its shards: gather the whole batch (a plain copy on one host).
      outputs.append(np.asarray(multihost_utils.process_allgather(images, tiled=True))[:num_samples - start])
    return np.concatenate(outputs), ids

  return run


def generate(model, variables, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
             image_shape: tuple[int, int, int], rng: jax.Array, mesh, num_samples: Optional[int] = None
             ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """num_samples (default config.sample.num_samples) images in [-1, 1] (N, H, W, C) and their ids (None for ddpm)."""
  return make_generator(model, schedule, config, image_shape, mesh, num_samples)(variables, rng)


def sampling_variables(state, use_ema: bool) -> dict:
  """The variables a sampler applies: EMA (or raw) params plus BatchNorm statistics."""
  variables = {'params': state.ema_params if use_ema else state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def is_class_conditional(model) -> bool:
  """Whether sample ids are class labels (rather than prototype draws)."""
  return model.model_type in pdm.CLASS_CONDITIONAL_MODELS
