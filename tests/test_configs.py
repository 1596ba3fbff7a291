"""Every experiment config: loads, documents its run command, and trains one step (tiny model, mock data)."""

import glob
import importlib
import os

import pytest
import tensorflow_datasets as tfds

from pdm_jax.models import kinds
from pdm_jax.training import loop
from pdm_jax.training import prototype_classifier
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


@pytest.mark.parametrize('name', DATASET_CONFIGS)
def test_one_train_step_on_mock_data(name, tmp_path):
  config = _load(name)
  tiny = tiny_config(config.model.type)
  # Keep the dataset settings, shrink everything that costs compile time.
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
  with tfds.testing.mock_data(num_examples=8):
    centres = prototype_classifier.train_stage_one(config, str(tmp_path),
                                                   rng=loop.run_keys(config.seed)['prototype_classifier'])
    _, state = loop.train(config, str(tmp_path), class_centres=centres)
  assert int(state.step) == 1
  assert os.path.isdir(tmp_path / 'checkpoints' / '1')
  assert (centres is not None) == os.path.isdir(tmp_path / 'prototype_classifier' / 'checkpoints' / '2') == (
      config.model.type == 'protodiffusion')
