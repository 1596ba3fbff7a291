"""ProtoDiffusion: the prototype classifier's loss, stage 1 and its checkpoint, the class embedding it starts, modes."""

import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import data
from pdm_jax import preflight
from pdm_jax.inference import restore
from pdm_jax.models import factory
from pdm_jax.models import pdm
from pdm_jax.training import checkpoints
from pdm_jax.training import loop
from pdm_jax.training import prototype_classifier
from pdm_jax.training import state as state_lib
from tests.tiny_configs import tiny_config

K = 10  # digit classes
CENTRES = pdm.CLASS_CENTRES


def _config(mode='proto_frozen', **train_overrides):
  config = tiny_config('protodiffusion', **train_overrides)
  config.protodiffusion.mode = mode
  return config


def _stage_one(config, workdir):
  return prototype_classifier.train_stage_one(config, str(workdir),
                                              rng=loop.run_keys(config.seed)['prototype_classifier'])


def _classifier_steps(workdir):
  return sorted(name for name in os.listdir(os.path.join(workdir, prototype_classifier.SUBDIR, 'checkpoints'))
                if name.isdigit())


def test_distance_cross_entropy_and_pull_by_hand():
  features = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  centres = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  labels = jnp.array([0, 1])
  terms = prototype_classifier.classifier_loss(features, centres, labels, gamma=0.5, pull_weight=0.1)
  # Squared distances: image 0 -> (4, 2), image 1 -> (4, 2); logits -0.5 d: (-2, -1) for both.
  # Image 0 (class 0): -log(e^-2 / (e^-2 + e^-1)) = log(1 + e); image 1 (class 1): log(1 + e^-1).
  cross_entropy = (math.log(1 + math.e) + math.log(1 + math.exp(-1))) / 2
  pull = (4.0 + 2.0) / 2  # each image's squared distance to its own centre
  np.testing.assert_allclose(terms['cross_entropy'], cross_entropy, rtol=1e-6)
  np.testing.assert_allclose(terms['pull'], pull, rtol=1e-6)
  np.testing.assert_allclose(terms['loss'], cross_entropy + 0.1 * pull, rtol=1e-6)
  assert float(terms['accuracy']) == 0.5  # image 0 is nearer centre 1


@pytest.fixture(scope='module')
def stage_one(tmp_path_factory):
  """Stage 1 (6 steps, a checkpoint every 4) in a fresh workdir: (workdir, centres)."""
  workdir = tmp_path_factory.mktemp('stage_one')
  config = _config()
  config.protodiffusion.classifier_steps = 6
  centres = _stage_one(config, workdir)
  return workdir, centres


def test_stage_one_checkpoints_its_centres(stage_one):
  workdir, centres = stage_one
  assert centres.shape == (K, 16) and np.all(np.isfinite(centres))
  assert _classifier_steps(workdir) == ['6']  # keeps only the newest: the step-4 save is gone
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', '0'))  # no diffusion step yet


def test_class_embedding_starts_as_the_centres_and_null_row_does_not(stage_one, tmp_path):
  _, centres = stage_one
  config = _config(label_dropout=0.1)
  experiment = loop.build_experiment(config, str(tmp_path), _info())
  try:
    state = loop.initial_state(experiment, centres)
  finally:
    experiment.checkpointer.close()
  np.testing.assert_array_equal(state.params[CENTRES], centres)
  np.testing.assert_array_equal(state.ema_params[CENTRES], centres)
  null_row = np.asarray(state.params[pdm.NULL_CLASS_EMBEDDING])
  assert null_row.shape == (16,) and not np.any(np.all(np.isclose(centres, null_row), axis=1))


def _info():
  return data.describe(_config().data)


def _train_from(stage_one, workdir, mode, monkeypatch):
  """A copy of stage 1's complete checkpoint in `workdir`, then 3 diffusion steps in `mode`: the final state."""
  source, centres = stage_one
  shutil.copytree(os.path.join(source, prototype_classifier.SUBDIR), os.path.join(workdir, prototype_classifier.SUBDIR))
  config = _config(mode, num_steps=3, label_dropout=0.5, warmup_steps=0)
  config.protodiffusion.classifier_steps = 6

  def no_retraining(*args, **kwargs):
    raise AssertionError('stage 1 retrained although its checkpoint is complete')

  with monkeypatch.context() as patch:
    patch.setattr(prototype_classifier, '_train', no_retraining)
    restored = _stage_one(config, workdir)
  np.testing.assert_array_equal(restored, centres)
  _, state = loop.train(config, str(workdir), class_centres=restored)
  return config, centres, state


def test_proto_frozen_never_moves_the_centres_and_resume_skips_stage_one(stage_one, tmp_path, monkeypatch):
  config, centres, state = _train_from(stage_one, tmp_path, 'proto_frozen', monkeypatch)
  assert int(state.step) == 3
  np.testing.assert_array_equal(state.params[CENTRES], centres)  # bit-identical
  np.testing.assert_array_equal(state.ema_params[CENTRES], centres)
  # The rest learns, the null row too (label dropout 0.5 drops some of the 48 labels).
  initial = state_lib.init_variables(factory.build_model(config.model, image_size=8, num_channels=1, num_classes=K,
                                                         null_class=True), loop.run_keys(config.seed)['init'],
                                     (8, 8, 1))['params']
  assert not np.allclose(state.params[pdm.NULL_CLASS_EMBEDDING], initial[pdm.NULL_CLASS_EMBEDDING])
  assert not np.allclose(state.params['unet']['class_projection']['kernel'],
                         initial['unet']['class_projection']['kernel'])

  # Resuming: the diffusion checkpoint holds the embedding, so stage 1 is neither run nor read.
  classifier_dir = os.path.join(tmp_path, prototype_classifier.SUBDIR, 'checkpoints', '6')
  mtime = os.stat(classifier_dir).st_mtime_ns
  with monkeypatch.context() as patch:
    patch.setattr(prototype_classifier, '_train', lambda *a, **k: pytest.fail('stage 1 retrained'))
    assert _stage_one(config, tmp_path) is None
  assert _classifier_steps(tmp_path) == ['6'] and os.stat(classifier_dir).st_mtime_ns == mtime
  config.train.num_steps = 4
  _, resumed = loop.train(config, str(tmp_path))  # no centres needed: restored from checkpoint 3
  assert int(resumed.step) == 4
  np.testing.assert_array_equal(resumed.params[CENTRES], centres)
  # A checkpoint trained frozen has another optimizer state: resuming it unfrozen is refused in one line.
  config.protodiffusion.mode = 'proto_unfrozen'
  with pytest.raises(checkpoints.CheckpointError, match=r"frozen_parameters: saved \['class_centres'\], now \[\]"):
    restore.restore_latest(config, str(tmp_path))


def test_proto_unfrozen_trains_the_centres(stage_one, tmp_path, monkeypatch):
  _, centres, state = _train_from(stage_one, tmp_path, 'proto_unfrozen', monkeypatch)
  moved = np.abs(np.asarray(state.params[CENTRES]) - centres).max(axis=1)
  # A row learns once its class is seen undropped (label dropout 0.5 here): most of them in 48 images.
  assert np.sum(moved > 0) >= K // 2, moved


def test_regular_mode_and_other_kinds_skip_stage_one(tmp_path):
  for config in (_config('regular'), tiny_config('cddpm')):
    assert _stage_one(config, tmp_path) is None
    assert prototype_classifier.frozen_parameters(config) == ()
  assert not os.path.exists(tmp_path / prototype_classifier.SUBDIR)
  assert prototype_classifier.frozen_parameters(_config('proto_frozen')) == (CENTRES,)
  assert prototype_classifier.frozen_parameters(_config('proto_unfrozen')) == ()


def test_a_fresh_proto_run_without_centres_says_how(tmp_path):
  experiment = loop.build_experiment(_config(), str(tmp_path), _info())
  try:
    with pytest.raises(ValueError, match=r'protodiffusion.mode=proto_frozen starts from the prototype classifier: '
                                         r'train with run.train_and_evaluate'):
      loop.initial_state(experiment)
  finally:
    experiment.checkpointer.close()


@pytest.mark.parametrize('field, value, message', [
    ('mode', 'frozen', r"protodiffusion.mode='frozen' is unknown: use one of regular, proto_frozen, proto_unfrozen\."),
    ('classifier_steps', 0, r'protodiffusion.classifier_steps=0 must be an integer >= 1'),
    ('gamma', 0.0, r'protodiffusion.gamma=0.0 must be a number > 0'),
    ('pull_weight', -1.0, r'protodiffusion.pull_weight=-1.0 must be a number >= 0'),
])
def test_bad_settings_stop_with_one_line(field, value, message):
  config = _config()
  setattr(config.protodiffusion, field, value)
  with pytest.raises(ValueError, match=message) as error:
    preflight.check(config, 'train')
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match=message):
    prototype_classifier.frozen_parameters(config)  # and where the optimizer is built


def test_dropped_rows_use_the_null_row_of_the_class_embedding():
  config = _config(label_dropout=0.1)
  model = factory.build_model(config.model, image_size=8, num_channels=1, num_classes=K, null_class=True)
  variables = state_lib.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  params = variables['params']
  assert params[CENTRES].shape == (K, 16) and 'class_embedding' not in params['unet']
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  t = jnp.array([0, 10, 49])
  labels = jnp.array([2, 5, 7])
  dropped, _ = model.apply(variables, x, t, labels=labels, drop_condition=jnp.array([True, False, True]))
  swapped = dict(params, **{CENTRES: params[CENTRES].at[jnp.array([2, 7])].set(params[pdm.NULL_CLASS_EMBEDDING])})
  expected, _ = model.apply({**variables, 'params': swapped}, x, t, labels=labels)
  np.testing.assert_allclose(dropped, expected, rtol=1e-5, atol=1e-6)
  kept, _ = model.apply(variables, x, t, labels=labels)
  assert not np.allclose(dropped[0], kept[0]) and np.allclose(dropped[1], kept[1], atol=1e-6)
