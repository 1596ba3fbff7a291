"""The Python API: a trained workdir as an object that samples, predicts noise and shows its prototypes.

  import pdm_jax
  model = pdm_jax.load('workdirs/digits_spdm')
  images = model.sample(16, method='ddim', num_steps=50, label=3)  # uint8 (16, 8, 8, 1)
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdm_jax import diffusion
from pdm_jax import image_grid
from pdm_jax.inference import generate
from pdm_jax.inference import restore

# The config a run trained with, written to its workdir so load() needs nothing else.
CONFIG_FILE = 'config.json'


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes <workdir>/config.json (process 0): the settings load() rebuilds the model from."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort(indent=1))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved by save_config; FileNotFoundError naming the fix if the workdir has none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: pass config= (the config the run trained with) to load(), or '
                            'train the workdir with this version of pdm-jax.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class TrainedModel:
  """A trained model of a workdir (EMA parameters by default) with its config and model kind."""

  def __init__(self, experiment, state, use_ema: bool = True):
    self.config = experiment.config
    self.model = experiment.model
    self.schedule = experiment.schedule
    self.image_shape = experiment.image_shape
    self.step = int(jax.device_get(state.step))
    self.variables = generate.sampling_variables(state, use_ema)
    self._experiment = experiment
    self._generators = {}

  @property
  def kind(self):
    """The model kind (models/kinds.py): its name, conditioning and loss terms."""
    return self.model.kind

  def sample(self, num: int, *, method: str | None = None, num_steps: int | None = None, label: int | None = None,
             prototype: int | None = None, guidance_scale: float | None = None, seed: int = 0) -> np.ndarray:
    """num images as uint8 (num, H, W, C). Unset settings are the run's sample.* ones; label (class-conditional
    kinds) or prototype (PDM) fixes the condition of every sample, else classes are balanced / prototypes random."""
    sample_config = ml_collections.ConfigDict(self.config.sample.to_dict())
    overrides = dict(method=method, num_steps=num_steps, guidance_scale=guidance_scale)
    sample_config.update({k: v for k, v in overrides.items() if v is not None})
    sample_config.update(label=label, prototype=prototype, num_samples=int(num))
    generate.check_sample_config(self.model, self.schedule, sample_config)
    key = json.dumps(sample_config.to_dict(), sort_keys=True, default=str)
    if key not in self._generators:
      config = ml_collections.ConfigDict(self.config.to_dict())
      config.sample = sample_config
      self._generators[key] = generate.make_generator(self.model, self.schedule, config, self.image_shape,
                                                      self._experiment.mesh)
    images, _ = self._generators[key](self.variables, jax.random.PRNGKey(seed))
    return image_grid.to_uint8(images)

  def predict_noise(self, x_t, t, label=None, prototype=None) -> np.ndarray:
    """The network's epsilon for float (B, H, W, C) x_t in [-1, 1] and integer t (scalar or (B,)); label (B,) or
    prototype (B,) for conditional kinds."""
    x_t = jnp.asarray(x_t, jnp.float32)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x_t.shape[0],))
    ids = label if self.kind.class_conditional else prototype
    if self.kind.conditional and ids is None:
      field = 'label' if self.kind.class_conditional else 'prototype'
      raise ValueError(f'model.type={self.kind.name} is conditional: pass {field}= (one id per image).')
    ids = None if ids is None else jnp.broadcast_to(jnp.asarray(ids, jnp.int32), (x_t.shape[0],))
    output, _ = self.model.apply(self.variables, x_t, t, prototype_ids=ids)
    return np.asarray(diffusion.to_epsilon(self.schedule, output, x_t, t, self.config.diffusion.prediction_type))

  def prototypes(self) -> np.ndarray:
    """The (K, prototype_dim) learned prototypes (pdm, spdm)."""
    self._need_prototypes()
    return np.asarray(self.variables['params']['memory']['prototypes'])

  def assign(self, images) -> np.ndarray:
    """(N,) nearest prototype of each image: uint8 (N, H, W, C) as samples are, or float in [-1, 1] (pdm, spdm)."""
    self._need_prototypes()
    images = np.asarray(images)
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 127.5 - 1.0
    _, nearest = self.model.apply(self.variables, jnp.asarray(images, jnp.float32),
                                  method=self.model.nearest_prototypes)
    return np.asarray(nearest)

  def _need_prototypes(self) -> None:
    if not self.kind.prototype_memory:
      raise ValueError(f'model.type={self.kind.name} has no prototypes (pdm and spdm have).')


def load(workdir: str, config: ml_collections.ConfigDict | None = None, use_ema: bool = True) -> TrainedModel:
  """The latest checkpoint of workdir as a TrainedModel; config defaults to the one the run saved there."""
  config = read_config(workdir) if config is None else config
  experiment, state = restore.restore_latest(config, workdir)
  experiment.checkpointer.close()
  return TrainedModel(experiment, state, use_ema)
