"""Every experiment config: loads, documents its run command, and trains one step (tiny model, mock data)."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from pdm_jax import data
from pdm_jax.models import kinds
from pdm_jax.training import loop
from pdm_jax.training import prototype_classifier
from pdm_jax.training import state as state_lib
from pdm_jax.training import train_step as train_step_lib
from tests.conftest import REPO
from tests.conftest import tiny_config

CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                      if not os.path.basename(p).startswith('_') and os.path.basename(p) != 'paper.py')
DATASET_CONFIGS = [name for name in CONFIG_FILES if not name.startswith(('digits', 'default'))]


def _load(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_config_docstring_carries_its_run_command(name):
  module = importlib.import_module(f'configs.{name}')
  assert f'python main.py --config=configs/{name}.py' in module.__doc__
  config = module.get_config()
  assert config.model.type in kinds.MODEL_TYPES


def test_dataset_configs_cover_five_datasets_and_every_method():
  assert len(DATASET_CONFIGS) == 25
  assert {name.rsplit('_', 1)[1] for name in DATASET_CONFIGS} == {'ddpm', 'cddpm', 'protodiffusion', 'pdm', 'spdm'}
  assert {name for name in CONFIG_FILES if name.startswith('digits')} == {
      f'digits_{method}' for method in ('ddpm', 'cddpm', 'protodiffusion', 'pdm', 'spdm')}
  for name in DATASET_CONFIGS:
    config = _load(name)
    assert config.model.type == name.rsplit('_', 1)[1]
    assert config.diffusion.num_timesteps == (2000 if config.model.type == 'pdm' else 1000)
    assert config.data.use_labels == (config.model.type in ('spdm', 'cddpm', 'protodiffusion'))
    assert config.train.label_dropout == (0.1 if config.model.type in ('cddpm', 'protodiffusion') else 0.0)
    assert config.diffusion.loss_weighting == ('min_snr' if config.model.type == 'cddpm' else 'uniform')
    assert config.train.batch_size == 64 and config.train.learning_rate == 1e-4
    assert tuple(config.model.block_out_channels) == (128, 256, 256, 256)
    if config.model.type == 'protodiffusion':
      assert config.model.prototype_dim == 128 and config.protodiffusion.mode == 'proto_frozen'
      assert config.protodiffusion.classifier_steps >= 1000  # a real stage 1, not the tests' 2 steps


# One compiled step per dataset and per method (the diagonal of the 5 x 5 grid): compiling all 25 cost ~15 minutes of
# CI, and each config's own combination is still traced (shapes, dtypes, conditioning) by the test after it.
TRAINED_CONFIGS = ['cifar10_pdm', 'celeba_spdm', 'eurosat_cddpm', 'stl10_ddpm', 'tiny_imagenet_protodiffusion']


def _smoke_config(name):
  """The config with its dataset settings kept and everything that costs compile time shrunk."""
  config = _load(name)
  tiny = tiny_config(config.model.type)
  config.model = tiny.model
  config.model.type = _load(name).model.type
  config.diffusion.num_timesteps = 50
  label_dropout = config.train.label_dropout  # the guided configs' null class is part of what is smoke-tested
  config.train = tiny.train
  config.train.label_dropout = label_dropout
  config.train.batch_size = 4
  config.train.num_steps = 1
  config.protodiffusion.classifier_steps = 2  # ProtoDiffusion's stage 1, as train_and_evaluate runs it
  config.data.image_size = min(config.data.image_size, 32)
  config.data.examples_per_class = 0  # random mock examples cannot fill a balanced subset
  return config


def test_the_trained_configs_cover_every_dataset_and_method():
  assert {name.rsplit('_', 1)[0] for name in TRAINED_CONFIGS} == {n.rsplit('_', 1)[0] for n in DATASET_CONFIGS}
  assert {name.rsplit('_', 1)[1] for name in TRAINED_CONFIGS} == {n.rsplit('_', 1)[1] for n in DATASET_CONFIGS}


@pytest.mark.parametrize('name', TRAINED_CONFIGS)
def test_one_train_step_on_mock_data(name, tmp_path):
  config = _smoke_config(name)
  with tfds.testing.mock_data(num_examples=8):
    centres = prototype_classifier.train_stage_one(config, str(tmp_path),
                                                   rng=loop.run_keys(config.seed)['prototype_classifier'])
    _, state = loop.train(config, str(tmp_path), class_centres=centres)
  assert int(state.step) == 1
  assert os.path.isdir(tmp_path / 'checkpoints' / '1')
  assert (centres is not None) == os.path.isdir(tmp_path / 'prototype_classifier' / 'checkpoints' / '2') == (
      config.model.type == 'protodiffusion')


@pytest.mark.parametrize('name', DATASET_CONFIGS)
def test_every_config_traces_its_train_step_on_mock_data(name, tmp_path):
  """The config's own batch (mock data through its pipeline) through its model kind's train step, traced only."""
  config = _smoke_config(name)
  with tfds.testing.mock_data(num_examples=8):
    info, batches = data.build(config.data, global_batch_size=config.train.batch_size, seed=config.seed)
    batch = next(batches)
  experiment = loop.build_experiment(config, str(tmp_path), info)
  keys = loop.run_keys(config.seed)
  state = jax.eval_shape(lambda: state_lib.create_train_state(experiment.model, experiment.tx, keys['init'],
                                                              keys['train'], experiment.image_shape))
  step_fn = train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, config,
                                           experiment.learning_rate_fn, experiment.mesh)
  new_state, metrics = jax.eval_shape(step_fn, state, batch)
  experiment.checkpointer.close()
  assert batch['image'].shape == (4, *experiment.image_shape)
  assert ('label' in batch) == config.data.use_labels
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state.params) == jax.tree.map(
      lambda a: (a.shape, a.dtype), state.params)
  assert metrics['loss'].shape == () and metrics['loss'].dtype == jnp.float32
  for term in experiment.model.kind.loss_terms:
    assert term in metrics, (term, sorted(metrics))
