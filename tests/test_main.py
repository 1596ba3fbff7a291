"""The command line end to end (train, sample) and its one-line errors for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pdm_jax import run
from pdm_jax.training import checkpoints
from tests.conftest import REPO
from tests.conftest import tiny_config


def _main(*args, check=True):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO))
  if check and result.returncode:
    raise AssertionError(result.stderr[-3000:])
  return result


def _error_line(result):
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: '), result.stderr[-2000:]
  return last


def _summary_tags(workdir):
  """Every tag in the TensorBoard event files of workdir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for name in os.listdir(workdir):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        tags.update(value.tag for value in event.summary.value)
  return tags


def test_train_then_sample_from_the_command_line(tmp_path):
  workdir = str(tmp_path / 'run')
  result = _main('--config=tests/tiny_cli_config.py:spdm', f'--workdir={workdir}')
  samples = np.load(os.path.join(workdir, 'samples', 'final.npz'))
  assert samples['images'].shape == (12, 8, 8, 1) and samples['images'].dtype == np.uint8
  np.testing.assert_array_equal(samples['labels'], np.arange(12) % 10)  # balanced classes
  assert os.path.getsize(os.path.join(workdir, 'samples', 'final.png')) > 0
  with open(os.path.join(workdir, 'samples', 'final_report.json')) as f:
    report = json.load(f)
  assert 0.0 <= report['accuracy'] <= 1.0 and len(report['class_counts']) == 10 and report['step'] == 8
  page = open(os.path.join(workdir, 'samples', 'index.html')).read()
  assert 'src="../samples/final.png"' in page and 'class_counts' in page and 'spdm' in page
  tags = _summary_tags(workdir)
  # clu's progress reporter, the per-class grid of the final samples, and the loss from the metric writer.
  assert {'steps_per_sec', 'samples_per_class', 'loss'} <= tags, tags
  assert 'ETA' in result.stderr

  _main('--config=tests/tiny_cli_config.py:spdm', f'--workdir={workdir}', '--mode=sample',
        '--config.sample.method=ddim', '--config.sample.num_steps=4', '--config.sample.label=3')
  again = np.load(os.path.join(workdir, 'samples', 'final.npz'))
  assert (again['labels'] == 3).all()
  assert not np.array_equal(again['images'], samples['images'])


@pytest.mark.parametrize('override,expected', [
    ('--config.data.image_size=7', 'cannot be halved'),
    ('--config.model.type=gan', "Unknown model.type='gan'"),
    ('--config.data.name=mnist', "unknown dataset data.name='mnist'"),
    ('--config.data.use_labels=False', 'needs labels'),
    # Sample settings are checked before training, not after it.
    ('--config.sample.method=ddpn', "Unknown sampling method sample.method='ddpn'"),
    ('--config.sample.label=10', r'sample.label=10 is out of range'),
    ('--config.sample.num_steps=51', 'sample.num_steps must be an int in [1, 50]'),
])
def test_bad_input_stops_with_one_line(tmp_path, override, expected):
  result = _main('--config=tests/tiny_cli_config.py:spdm', f'--workdir={tmp_path}', override, check=False)
  assert expected in _error_line(result)
  assert not os.path.exists(tmp_path / 'checkpoints' / '0')


@pytest.mark.parametrize('args,expected', [
    (('--config=configs/no_such_config.py',), 'error: --config=configs/no_such_config.py: no such file'),
    (('--config=tests/tiny_cli_config.py:spdm', '--config.train.num_stepz=3'),
     'error: --config.train.num_stepz: the config has no such field (did you mean "num_steps"?)'),
    (('--config=tests/tiny_cli_config.py:spdm', '--config.train.num_steps=many'),
     "error: flag --config.train.num_steps=many: invalid literal for int()"),
    (('--config=configs/digits_pdm.py:extra',),  # a config module that raises
     'TypeError: get_config() takes 0 positional arguments but 1 was given'),
])
def test_config_errors_are_one_line(tmp_path, args, expected):
  result = _main(*args, f'--workdir={tmp_path}', check=False)
  assert expected in _error_line(result)
  assert 'Traceback' not in result.stderr and not os.listdir(tmp_path)


# Samplers only see eps_fn, so every method is checked through one model and every model through one method.
@pytest.mark.parametrize('model_type,methods', [
    ('spdm', ('ddpm', 'ddim', 's-pndm', 'f-pndm', 'fon', 'pf')),
    ('ddpm', ('ddim',)),
    ('protodiffusion', ('ddim',)),  # stage 1 (the prototype classifier) runs inside train_and_evaluate
])
def test_models_sample_with_the_configured_method(tmp_path, model_type, methods):
  config = tiny_config(model_type, num_steps=2)
  run.train_and_evaluate(config, str(tmp_path))
  stage_one = tmp_path / 'prototype_classifier' / 'checkpoints' / str(config.protodiffusion.classifier_steps)
  assert os.path.isdir(stage_one) == (model_type == 'protodiffusion')
  for method in methods:
    config.sample.method = method
    config.sample.num_steps = 4
    report = run.sample(config, str(tmp_path))
    assert report['method'] == method
    images = np.load(tmp_path / 'samples' / 'final.npz')['images']
    assert images.shape == (12, 8, 8, 1)
    assert images.std() > 0  # not a constant image: the sampler produced something


def test_pdm_can_redraw_prototypes_every_step_as_the_reference(tmp_path):
  config = tiny_config('pdm', num_steps=2)
  run.train_and_evaluate(config, str(tmp_path))
  fixed = np.load(tmp_path / 'samples' / 'final.npz')['images']
  config.model.redraw_prototype_each_step = True
  run.sample(config, str(tmp_path))
  redrawn = np.load(tmp_path / 'samples' / 'final.npz')['images']
  assert not np.array_equal(fixed, redrawn)


def test_sampling_errors_name_the_fix(tmp_path):
  config = tiny_config('spdm', num_steps=2)
  with pytest.raises(FileNotFoundError, match='train first'):
    run.sample(config, str(tmp_path))
  run.train_and_evaluate(config, str(tmp_path))
  config.sample.label = 10
  with pytest.raises(ValueError, match=r'classes 0\.\.9'):
    run.sample(config, str(tmp_path))
  config.sample.label = None
  config.sample.method = 'euler'
  with pytest.raises(ValueError, match="Unknown sampling method sample.method='euler'"):
    run.sample(config, str(tmp_path))
  config.sample.method = 'ddim'
  config.sample.num_steps = 51
  with pytest.raises(ValueError, match=r'sample\.num_steps must be an int in \[1, 50\]'):
    run.sample(config, str(tmp_path))
  other = tiny_config('pdm', num_steps=2)
  with pytest.raises(checkpoints.CheckpointError, match='different model'):
    run.sample(other, str(tmp_path))


def test_sample_mode_needs_no_training_data(tmp_path):
  """A model trained on an image folder samples from its workdir after the folder is gone."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'images'
  rng = np.random.default_rng(0)
  for label in ('cats', 'dogs'):
    (folder / label).mkdir(parents=True)
    for i in range(8):
      Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode='L').save(folder / label / f'{i}.png')
  workdir = str(tmp_path / 'run')
  data_flags = ('--config.data.name=image_folder', f'--config.data.data_dir={folder}', '--config.data.num_channels=1',
                '--config.train.num_steps=2')
  _main('--config=tests/tiny_cli_config.py:spdm', f'--workdir={workdir}', *data_flags)
  for path in sorted(folder.rglob('*.png')):
    path.unlink()
  for child in sorted(folder.iterdir()):
    child.rmdir()
  folder.rmdir()
  _main('--config=tests/tiny_cli_config.py:spdm', f'--workdir={workdir}', *data_flags, '--mode=sample',
        '--config.sample.method=ddim', '--config.sample.num_steps=3')
  samples = np.load(os.path.join(workdir, 'samples', 'final.npz'))
  assert samples['images'].shape == (12, 8, 8, 1)
  np.testing.assert_array_equal(samples['labels'], np.arange(12) % 2)  # the folder's two classes, balanced
