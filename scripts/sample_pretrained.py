"""Samples images from a pretrained diffusers UNet2DModel with pdm-jax's samplers.

  python scripts/sample_pretrained.py --model_dir=ddpm-cifar10-32 \
      --out=samples.npz --num_samples=64 --method=ddim --num_steps=50

--model_dir is a diffusers pipeline directory (with unet/ and, optionally,
scheduler/) or a bare UNet directory. Writes `images` (N, H, W, C) uint8 to the
npz and a PNG grid next to it.
"""

import json
import os
import sys
from typing import Any, Dict, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

# Lets `python scripts/sample_pretrained.py` import the package from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from pdm_jax import diffusion
from pdm_jax import image_grid
from pdm_jax import sampling
from pdm_jax.models import diffusers_format
from pdm_jax.models import diffusers_import
# pylint: enable=g-import-not-at-top,wrong-import-position

# diffusers beta_schedule / prediction_type names -> pdm_jax names.
_BETA_SCHEDULES = diffusers_format.BETA_SCHEDULES
_PREDICTION_TYPES = diffusers_format.PREDICTION_TYPES


def read_scheduler_config(model_dir: str) -> Dict[str, Any]:
  """scheduler/scheduler_config.json of a pipeline dir (or its parent), else {}."""
  for directory in (model_dir, os.path.dirname(os.path.normpath(model_dir))):
    path = os.path.join(directory, 'scheduler', 'scheduler_config.json')
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f)
  return {}


def schedule_from_scheduler_config(config: Dict[str, Any]):
  """(diffusion.Schedule, prediction type) from a diffusers scheduler config dict."""
  if config.get('trained_betas') is not None:
    schedule = diffusion.betas_to_schedule(np.asarray(config['trained_betas']))
  else:
    name = config.get('beta_schedule', 'linear')
    if name not in _BETA_SCHEDULES:
      raise ValueError(f'beta_schedule={name!r} is not supported: use one of '
                       f'{", ".join(_BETA_SCHEDULES)}')
    schedule = diffusion.make_schedule(
        _BETA_SCHEDULES[name], int(config.get('num_train_timesteps', 1000)),
        float(config.get('beta_start', 1e-4)), float(config.get('beta_end', 0.02)))
  prediction = config.get('prediction_type', 'epsilon')
  if prediction not in _PREDICTION_TYPES:
    raise ValueError(f'prediction_type={prediction!r} is not supported: use one of '
                     f'{", ".join(_PREDICTION_TYPES)}')
  return schedule, _PREDICTION_TYPES[prediction]


def _image_size(model_dir: str) -> int:
  """sample_size from the UNet's config.json (an int or [H, W])."""
  unet_dir = (os.path.join(model_dir, 'unet')
              if os.path.isdir(os.path.join(model_dir, 'unet')) else model_dir)
  with open(os.path.join(unet_dir, 'config.json')) as f:
    size = json.load(f).get('sample_size')
  if size is None:
    raise ValueError('config.json has no sample_size: pass --image_size')
  return size if isinstance(size, int) else tuple(size)


def sample_pretrained(model_dir: str, out: str, num_samples: int,
                      method: str = 'ddim', num_steps: int = 50,
                      batch_size: int = 64, seed: int = 0,
                      image_size: Optional[int] = None,
                      class_label: int = -1, timestep_spacing: str = 'leading',
                      eta: float = 0.0) -> np.ndarray:
  """Samples images, writes `out` (npz) and its PNG grid; returns uint8 (N, H, W, C)."""
  if num_samples < 1 or batch_size < 1:
    raise ValueError('num_samples and batch_size must be positive: pass values >= 1')
  model, params = diffusers_import.load_diffusers_unet(model_dir)
  if model.bottleneck_attention:
    raise ValueError('this UNet has PDM bottleneck attention and needs prototype '
                     'tokens: sample it with main.py --mode=sample instead')
  schedule, prediction_type = schedule_from_scheduler_config(
      read_scheduler_config(model_dir))
  if prediction_type != 'epsilon' and method in ('fon', 'pf'):
    # to_epsilon indexes the schedule at t, which these samplers make fractional.
    raise ValueError(f'{prediction_type}-prediction models need an integer-time '
                     'sampler: use --method=ddpm, ddim, s-pndm or f-pndm')
  size = image_size or _image_size(model_dir)
  height, width = (size, size) if isinstance(size, int) else size
  batch_size = min(batch_size, num_samples)
  shape = (batch_size, height, width, model.in_channels)

  def eps_fn_for(labels):
    def eps_fn(x_t, t):
      output = model.apply({'params': params}, x_t, t, class_labels=labels)
      return diffusion.to_epsilon(schedule, output, x_t, t, prediction_type)
    return eps_fn

  # One compiled program for every batch; the last batch is truncated after.
  @jax.jit
  def sample_batch(rng):
    label_rng, rng = jax.random.split(rng)
    labels = None
    if model.num_class_embeds is not None:
      labels = (jnp.full((batch_size,), class_label, jnp.int32) if class_label >= 0
                else jax.random.randint(label_rng, (batch_size,), 0,
                                        model.num_class_embeds))
    return sampling.sample(eps_fn_for(labels), schedule, shape, rng,
                           method=method, num_steps=num_steps,
                           timestep_spacing=timestep_spacing, eta=eta)

  rng = jax.random.PRNGKey(seed)
  batches = [image_grid.to_uint8(sample_batch(jax.random.fold_in(rng, i)))
             for i in range(-(-num_samples // batch_size))]
  images = np.concatenate(batches)[:num_samples]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, images=images)
  image_grid.save_png(os.path.splitext(out)[0] + '.png',
                      image_grid.make_grid(images[:100]))
  return images


_MODEL_DIR = flags.DEFINE_string('model_dir', None,
                                 'diffusers pipeline or UNet2DModel directory.')
_OUT = flags.DEFINE_string('out', 'samples.npz', 'Output npz; the grid goes to .png.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 64, 'Number of images.')
_METHOD = flags.DEFINE_string('method', 'ddim', 'Sampler name (pdm_jax.sampling).')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 50, 'Sampling steps.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per device batch.')
_TIMESTEP_SPACING = flags.DEFINE_string(
    'timestep_spacing', 'leading', "'leading' (diffusers' default) or 'trailing'.")
_ETA = flags.DEFINE_float('eta', 0.0, 'DDIM noise level (0: deterministic).')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None,
                                   'Overrides config.json sample_size.')
_CLASS_LABEL = flags.DEFINE_integer(
    'class_label', -1, 'Class for class-conditional UNets; -1 draws random ones.')


def main(argv):
  del argv
  images = sample_pretrained(_MODEL_DIR.value, _OUT.value, _NUM_SAMPLES.value,
                             _METHOD.value, _NUM_STEPS.value, _BATCH_SIZE.value,
                             _SEED.value, _IMAGE_SIZE.value, _CLASS_LABEL.value,
                             _TIMESTEP_SPACING.value, _ETA.value)
  print(f'Wrote {images.shape} uint8 images to {_OUT.value}')


if __name__ == '__main__':
  flags.mark_flag_as_required('model_dir')
  app.run(main)
