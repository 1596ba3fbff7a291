"""--mode=eval and periodic evaluation: metrics.json from a checkpoint, digits metrics, one-line errors, hooks."""

import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from clu import metric_writers

from pdm_jax import run
from pdm_jax.evaluation import inception
from pdm_jax.evaluation import inception_weights
from pdm_jax.evaluation import reference_stats
from pdm_jax.inference import evaluate
from pdm_jax.training import loop
from tests.conftest import REPO
from tests.conftest import tiny_config

torch = pytest.importorskip('torch')

INCEPTION_KEYS = {'fid', 'kid_mean', 'kid_std', 'kid_subset_size', 'is_mean', 'is_std', 'num_samples', 'method',
                  'num_steps', 'step'}
DIGITS_KEYS = {'digits_accuracy', 'digits_class_counts', 'digits_num_classes_present', 'digits_frechet_distance'}


def _torch_name(collection: str, path: tuple) -> str:
  """Flax variable path -> pytorch-fid state-dict key (the inverse of inception_weights' mapping)."""
  *modules, leaf = path
  if collection == 'batch_stats':
    leaf = {'mean': 'running_mean', 'var': 'running_var'}[leaf]
  else:
    leaf = {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)
  return '.'.join([*modules, leaf])


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
  """Random FID-Inception weights saved with torch.save in pytorch-fid's key names and layouts."""
  state = {}
  for collection, tree in inception.init_random_variables(seed=0).items():
    for path, leaf in inception_weights._flatten(tree):  # pylint: disable=protected-access
      array = np.asarray(leaf)
      if array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)  # flax (kh, kw, I, O) -> torch (O, I, kh, kw)
      elif array.ndim == 2:
        array = array.T
      # np.array copies: torch wants a writable buffer, and jax's are read-only.
      state[_torch_name(collection, path)] = torch.from_numpy(np.array(array))
  path = tmp_path_factory.mktemp('weights') / 'random_fid_inception.pth'
  torch.save(state, path)
  return path


class _RecordingWriter(metric_writers.LoggingWriter):
  """A logging writer that also keeps what was written."""

  def __init__(self):
    super().__init__()
    self.scalars, self.images = [], []

  def write_scalars(self, step, scalars):
    self.scalars.append((int(step), dict(scalars)))
    super().write_scalars(step, scalars)

  def write_images(self, step, images):
    self.images.append((int(step), {key: np.asarray(value).shape for key, value in images.items()}))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One tiny s-PDM run for the whole file: 6 steps on digits, evaluated every 2 (digits metrics only).

  Returns (workdir with a checkpoint at step 6, the recording writer, the hook calls as (step, state.step)).
  """
  workdir = str(tmp_path_factory.mktemp('run'))
  writer, calls = _RecordingWriter(), []
  real_call = evaluate.PeriodicEvaluator.__call__

  def counting_call(self, experiment, state, step):
    calls.append((step, int(state.step)))
    return real_call(self, experiment, state, step)

  config = tiny_config('spdm', num_steps=6, log_every=3, checkpoint_every=100)
  config.eval.every_steps = 2
  config.eval.periodic_num_samples = 10
  config.eval.inception = False
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(run.metric_writers, 'create_default_writer', lambda *args, **kwargs: writer)
    patch.setattr(evaluate.PeriodicEvaluator, '__call__', counting_call)
    run.train_and_evaluate(config, workdir)
  return workdir, writer, calls


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  """Weights and reference statistics cached in the test's own directory, never in ~/.cache."""
  monkeypatch.setenv(inception_weights.CACHE_DIR_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def _eval_config(**eval_fields):
  config = tiny_config('spdm', num_steps=6)
  config.eval.num_samples = 12
  config.eval.num_real = 16
  config.eval.batch_size = 16
  config.eval.update(eval_fields)
  return config


def _one_line(error) -> str:
  message = str(error.value)
  assert '\n' not in message
  return message


def test_eval_writes_inception_and_digits_metrics(trained, weights_file, cache_dir):
  config = _eval_config(inception_weights=str(weights_file))
  with pytest.warns(RuntimeWarning, match='KID subset size reduced'):
    result = run.evaluate(config, trained[0])
  with open(os.path.join(trained[0], 'eval', 'metrics.json')) as f:
    written = json.load(f)
  assert INCEPTION_KEYS | DIGITS_KEYS <= set(written)
  for key in ('fid', 'kid_mean', 'kid_std', 'is_mean', 'is_std', 'digits_accuracy', 'digits_frechet_distance'):
    assert math.isfinite(written[key]), key
  assert written['fid'] > 0 and written['is_mean'] >= 1.0
  assert written['num_samples'] == 12 and written['kid_subset_size'] == 12 and written['num_real'] == 16
  assert written['step'] == 6 and written['method'] == 'ddpm' and written['num_steps'] == 5
  assert sum(written['digits_class_counts']) == 12 and result['fid'] == written['fid']
  assert os.path.getsize(os.path.join(trained[0], 'eval', 'samples.png')) > 0
  # The real digits' statistics are cached under the key of dataset, split, size and weights.
  dataset, split = evaluate.reference_key(config)
  weights_hash = inception_weights.weights_fingerprint(weights_file)
  cached = reference_stats.reference_stats_path(dataset, split, 8, weights_hash)
  assert cached.is_file() and str(cached).startswith(str(cache_dir))
  assert reference_stats.load_reference_stats(cached).num_images == 16


def test_eval_without_inception_gives_digits_metrics_only(trained, monkeypatch):
  def no_weights(*args, **kwargs):
    raise AssertionError('Inception must not be loaded with eval.inception=False')
  monkeypatch.setattr(inception_weights, 'find_or_download_weights', no_weights)
  result = run.evaluate(_eval_config(inception=False), trained[0])
  assert DIGITS_KEYS <= set(result) and not {'fid', 'kid_mean', 'is_mean'} & set(result)
  with open(os.path.join(trained[0], 'eval', 'metrics.json')) as f:
    assert set(json.load(f)) == set(result)
  assert 0.0 <= result['digits_accuracy'] <= 1.0 and result['step'] == 6


def test_missing_weights_offline_stops_in_one_line(trained, monkeypatch, cache_dir):
  def offline(*args, **kwargs):
    raise urllib.error.URLError('no network')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(FileNotFoundError) as error:
    run.evaluate(_eval_config(), trained[0])
  message = _one_line(error)
  assert str(inception_weights.default_weights_path()) in message and str(cache_dir) in message
  missing = cache_dir / 'elsewhere.pth'
  with pytest.raises(FileNotFoundError, match='no Inception weights file at') as error:
    run.evaluate(_eval_config(inception_weights=str(missing)), trained[0])
  assert str(missing) in _one_line(error)


def test_eval_without_a_checkpoint_is_a_one_line_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in') as error:
    run.evaluate(_eval_config(), str(tmp_path / 'empty'))
  assert 'train first' in _one_line(error)
  result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--config=configs/digits_spdm.py',
                           f'--workdir={tmp_path / "empty_cli"}', '--mode=eval'], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: no checkpoint in'), result.stderr[-2000:]


@pytest.mark.parametrize('fields,expected', [
    (dict(num_samples=5), 'eval.num_samples=5 is too few'),
    (dict(num_samples=1, inception=False), 'eval.num_samples=1 is too few'),
])
def test_too_few_samples_are_refused_before_any_work(tmp_path, fields, expected):
  with pytest.raises(ValueError, match=expected):
    run.evaluate(_eval_config(**fields), str(tmp_path))


def test_periodic_evaluation_fires_every_n_steps_and_writes_scalars(trained):
  workdir, writer, calls = trained
  assert calls == [(2, 2), (4, 4), (6, 6)]
  evals = [(step, scalars) for step, scalars in writer.scalars if any(k.startswith('eval/') for k in scalars)]
  assert [step for step, _ in evals] == [2, 4, 6]
  for _, scalars in evals:
    # The Frechet distance's tag carries its sample count, so it is never read as a full-size estimate.
    assert scalars['eval/num_samples'] == 10 and math.isfinite(scalars['eval/digits_frechet_distance_10'])
    assert 'eval/digits_frechet_distance' not in scalars
    assert 'eval/digits_accuracy' in scalars and not any(k.startswith('eval/fid') for k in scalars)
    # s-PDM's prototypes, counted over the whole digits set (1,797 images).
    assert 1 <= scalars['eval/prototypes_in_use'] <= 10 and scalars['eval/num_images'] == 1797
    assert 0 <= scalars['eval/prototype_class_nmi'] <= 1
  # The same history, machine-readable, one line per evaluation.
  with open(os.path.join(workdir, 'eval', 'periodic.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert [entry['step'] for entry in history] == [2, 4, 6]
  assert [entry['digits_frechet_distance'] for entry in history] == [
      scalars['eval/digits_frechet_distance_10'] for _, scalars in evals]
  # s-PDM is class-conditional: one grid row per class (10 labels in 10 samples, so at most 10 rows).
  grids = [(step, images['eval/samples_per_class']) for step, images in writer.images
           if 'eval/samples_per_class' in images]
  assert [step for step, _ in grids] == [2, 4, 6]


def test_loop_rejects_a_malformed_hook(tmp_path):
  with pytest.raises(ValueError, match='periodic hooks'):
    loop.train(tiny_config('spdm', num_steps=1), str(tmp_path), periodic=[(-1, print)])
