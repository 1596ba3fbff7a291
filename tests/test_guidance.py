"""Classifier-free guidance: the null class that label dropout trains, and the guided mix at sampling."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pdm_jax import diffusion
from pdm_jax import preflight
from pdm_jax import sampling
from pdm_jax.inference import generate
from pdm_jax.models import factory
from pdm_jax.training import checkpoints
from pdm_jax.training import optimizer
from pdm_jax.training import sharding
from pdm_jax.training import state as state_lib
from pdm_jax.training import train_step as train_step_lib
from tests.tiny_configs import tiny_config

K = 10


def _model(model_type: str, label_dropout: float = 0.1):
  config = tiny_config(model_type, label_dropout=label_dropout)
  model = factory.build_model(config.model, image_size=8, num_channels=1, num_classes=K,
                              null_class=factory.has_null_class(config))
  # Jitted: eager init dispatches every op of the UNet one by one (tens of seconds on a CPU).
  init = jax.jit(lambda rng: state_lib.init_variables(model, rng, (8, 8, 1)))
  return config, model, init(jax.random.PRNGKey(0))


def test_null_class_is_a_parameter_and_part_of_the_signature():
  _, cddpm, variables = _model('cddpm')
  assert variables['params']['unet']['class_embedding']['embedding'].shape[0] == K + 1
  _, spdm, variables = _model('spdm')
  assert variables['params']['null_token'].shape == (16,)
  assert variables['params']['memory']['prototypes'].shape[0] == K  # still one prototype per class
  assert checkpoints.model_signature(tiny_config('spdm', label_dropout=0.1), (8, 8, 1), K)['null_class'] is True
  assert 'null_class' not in checkpoints.model_signature(tiny_config('spdm'), (8, 8, 1), K)


def test_dropped_rows_are_denoised_with_the_null_class():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  t = jnp.array([0, 10, 20, 49])
  labels = jnp.array([0, 3, 5, 9])
  drop = jnp.array([True, False, True, False])
  _, cddpm, variables = _model('cddpm')
  dropped, _ = cddpm.apply(variables, x, t, labels=labels, drop_condition=drop)
  as_null, _ = cddpm.apply(variables, x, t, labels=jnp.where(drop, K, labels))
  np.testing.assert_allclose(dropped, as_null, rtol=1e-6)

  _, spdm, variables = _model('spdm')
  params = jax.tree.map(jnp.copy, variables['params'])
  params['null_token'] = jnp.linspace(-1.0, 1.0, 16)
  dropped, _ = spdm.apply({**variables, 'params': params}, x, t, prototype_ids=labels, drop_condition=drop)
  # The same rows with their prototypes overwritten by the null token.
  swapped = jax.tree.map(jnp.copy, params)
  swapped['memory']['prototypes'] = params['memory']['prototypes'].at[jnp.array([0, 5])].set(params['null_token'])
  expected, _ = spdm.apply({**variables, 'params': swapped}, x, t, prototype_ids=labels)
  np.testing.assert_allclose(dropped, expected, rtol=1e-5, atol=1e-6)
  kept, _ = spdm.apply({**variables, 'params': params}, x, t, prototype_ids=labels)
  assert not np.allclose(dropped[0], kept[0])


def _one_step(config, model, variables):
  tx = optimizer.make_optimizer(config.train)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                               batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(variables['params']),
                               ema_params=variables['params'], rng=jax.random.PRNGKey(3))
  batch = dict(image=jax.random.uniform(jax.random.PRNGKey(4), (16, 8, 8, 1), minval=-1, maxval=1),
               label=jnp.arange(16, dtype=jnp.int32) % K)
  schedule = diffusion.make_schedule('linear', 50, 1e-4, 0.02)
  step = jax.jit(functools.partial(train_step_lib.train_step, model=model, tx=tx, schedule=schedule, config=config,
                                   learning_rate_fn=optimizer.learning_rate_schedule(config.train)))
  next_state, _ = step(state, batch)
  return next_state


@pytest.mark.parametrize('label_dropout, null_row_trained', [(0.5, True), (1e-6, False)])
def test_label_dropout_trains_the_null_class(label_dropout, null_row_trained):
  config, model, variables = _model('cddpm', label_dropout)
  config.train.warmup_steps = 0
  before = variables['params']['unet']['class_embedding']['embedding']
  after = _one_step(config, model, variables).params['unet']['class_embedding']['embedding']
  assert (not np.allclose(after[K], before[K])) == null_row_trained
  assert not np.allclose(after[:K], before[:K])  # the labelled rows learn either way


def test_guided_sampling_mixes_the_two_predictions():
  config, model, variables = _model('spdm')
  params = dict(variables['params'], null_token=jnp.linspace(-1.0, 1.0, 16))
  variables = {**variables, 'params': params}
  schedule = diffusion.make_schedule('linear', 50, 1e-4, 0.02)
  mesh = sharding.data_mesh(jax.devices()[:1])
  ids = jnp.array([1, 2, 3, 4], jnp.int32)
  rng = jax.random.PRNGKey(5)

  def sampled(scale):
    sample_config = ml_collections.ConfigDict(dict(config.sample.to_dict(), method='ddim', num_steps=3,
                                                   guidance_scale=scale))
    return generate.make_sampler(model, schedule, sample_config, 'epsilon', (4, 8, 8, 1), mesh)(variables, rng, ids)

  def eps(drop):
    def fn(x_t, t):
      return model.apply(variables, x_t, t, prototype_ids=ids, drop_condition=jnp.full((4,), drop))[0]
    return fn

  noise_rng, _ = jax.random.split(rng)
  for scale in (0.0, 3.0):
    mixed = lambda x_t, t, s=scale: eps(True)(x_t, t) + s * (eps(False)(x_t, t) - eps(True)(x_t, t))
    expected = sampling.sample(mixed, schedule, (4, 8, 8, 1), noise_rng, method='ddim', num_steps=3)
    np.testing.assert_allclose(sampled(scale), expected, rtol=1e-4, atol=1e-5)
  unguided = sampling.sample(eps(False), schedule, (4, 8, 8, 1), noise_rng, method='ddim', num_steps=3)
  np.testing.assert_allclose(sampled(1.0), unguided, rtol=1e-4, atol=1e-5)
  assert not np.allclose(sampled(3.0), unguided, atol=1e-3)


@pytest.mark.parametrize('model_type, field, value, message', [
    ('spdm', 'sample.guidance_scale', 2.0, r'sample.guidance_scale=2.0 needs a class-conditional model trained with '
                                           r'train.label_dropout > 0'),
    ('cddpm', 'sample.guidance_scale', -1.0, r'sample.guidance_scale=-1.0 must be a number >= 0'),
    ('pdm', 'train.label_dropout', 0.1, r'model.type=pdm is not class-conditional: set train.label_dropout=0'),
    ('cddpm', 'train.label_dropout', 1.0, r'train.label_dropout=1.0 must be a number >= 0.0 and < 1.0'),
])
def test_bad_guidance_settings_stop_before_training(model_type, field, value, message):
  config = tiny_config(model_type)
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    preflight.check(config, 'train')
