"""--mode=inspect: the four pictures and report.json of a tiny pdm and s-PDM, the PCA, purity and row choice by hand,
and the one-line refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pdm_jax import run
from pdm_jax.inference import generate
from pdm_jax.inference import inspection
from pdm_jax.inference import prototype_health
from pdm_jax.inference import restore
from tests.conftest import REPO
from tests.conftest import tiny_config

PICTURES = ('features_pca.png', 'samples_per_prototype.png', 'prototype_usage.png', 'prototype_similarity.png')


def _config(model_type):
  config = tiny_config(model_type, num_steps=4)
  config.sample.method = 'ddim'
  config.sample.num_steps = 2
  config.inspect.max_rows = 4  # K = 10: prototypes 0, 3, 6, 9
  config.inspect.samples_per_prototype = 3
  return config


def _train_and_inspect(model_type, tmp_path_factory):
  """(config, workdir, report) of a tiny model trained 4 steps on digits, then inspected."""
  config = _config(model_type)
  workdir = str(tmp_path_factory.mktemp(model_type))
  run.train_and_evaluate(config, workdir)
  return config, workdir, run.inspect(config, workdir)


@pytest.fixture(scope='module')
def pdm_run(tmp_path_factory):
  return _train_and_inspect('pdm', tmp_path_factory)


@pytest.fixture(scope='module')
def spdm_run(tmp_path_factory):
  return _train_and_inspect('spdm', tmp_path_factory)


@pytest.fixture(params=['pdm_run', 'spdm_run'])
def inspected(request):
  return request.getfixturevalue(request.param)


def test_inspect_writes_four_pictures(inspected):
  _, workdir, _ = inspected
  sizes = {}
  for name in PICTURES:
    with Image.open(os.path.join(workdir, 'inspect', name)) as image:
      image.load()  # decodes the whole file, not just its header
      sizes[name] = image.size
      assert image.format == 'PNG'
      assert 300 <= image.size[0] <= 3000 and 200 <= image.size[1] <= 3000, (name, image.size)
  # Four rows of three 8x8 samples: 45 px each at least, so at least 4 * 45 px of images in height.
  assert sizes['samples_per_prototype.png'][1] >= 4 * 45


def test_restore_latest_opens_one_checkpointer(pdm_run, monkeypatch):
  config, workdir, _ = pdm_run
  opened = []
  original = restore.checkpoints.Checkpointer

  def counting(*args, **kwargs):
    opened.append(original(*args, **kwargs))
    return opened[-1]

  monkeypatch.setattr(restore.checkpoints, 'Checkpointer', counting)  # the module loop.py uses too
  experiment, state = restore.restore_latest(config, workdir)
  experiment.checkpointer.close()
  assert opened == [experiment.checkpointer] and int(state.step) == 4


def test_report_shares_match_a_recount_of_the_dataset(inspected):
  config, workdir, returned = inspected
  with open(os.path.join(workdir, 'inspect', 'report.json')) as f:
    report = json.load(f)
  assert report == json.loads(json.dumps(returned))
  assert report['step'] == 4 and report['num_prototypes'] == 10
  assert report['sampled_prototypes'] == [0, 3, 6, 9] and report['samples_per_prototype'] == 3

  experiment, state = restore.restore_latest(config, workdir)
  experiment.checkpointer.close()
  variables = generate.sampling_variables(state, config.sample.use_ema)
  _, nearest, labels = prototype_health.dataset_assignments(experiment.model, variables, config)
  # Every one of the 1797 digits, labelled even for pdm (for the colours).
  assert len(nearest) == report['num_images'] == 1797 and labels is not None
  shares = np.asarray(report['prototype_shares'])
  assert shares.shape == (10,) and shares.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(shares, np.bincount(nearest, minlength=10) / len(nearest))
  for key, value in prototype_health.health(nearest, 10, labels).items():
    assert report[key] == pytest.approx(value), key
  prototypes = np.asarray(variables['params']['memory']['prototypes'])
  unit = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
  off_diagonal = (unit @ unit.T)[~np.eye(10, dtype=bool)]
  assert report['prototype_max_abs_cosine'] == pytest.approx(np.max(np.abs(off_diagonal)), abs=1e-6)


def test_report_has_the_digit_purity_of_each_sampled_prototype(inspected):
  _, _, report = inspected
  rows = report['digits_per_prototype']
  assert [row['prototype'] for row in rows] == [0, 3, 6, 9]
  for row in rows:
    assert 0 <= row['majority_digit'] <= 9
    # 3 samples: the majority holds 1, 2 or all 3 of them.
    assert min(abs(row['purity'] - share) for share in (1 / 3, 2 / 3, 1.0)) < 1e-9, row
  assert report['mean_purity'] == pytest.approx(np.mean([row['purity'] for row in rows]))


def test_inspect_repeats_itself_and_fixes_one_prototype_per_row(pdm_run, monkeypatch):
  config, workdir, report = pdm_run
  sampled_ids = []

  def recording(experiment, variables, config, ids, rng):
    sampled_ids.append(np.asarray(ids))
    return sample_with_ids(experiment, variables, config, ids, rng)

  sample_with_ids = inspection.sample_with_ids
  monkeypatch.setattr(inspection, 'sample_with_ids', recording)
  assert run.inspect(config, workdir) == report  # same samples, same purity: randomness from the config seed
  np.testing.assert_array_equal(sampled_ids[0], [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9])


def test_missing_data_stops_inspect_before_any_picture(pdm_run, tmp_path):
  _, workdir, _ = pdm_run
  config = _config('pdm')
  config.data.name = 'image_folder'
  config.data.data_dir = str(tmp_path / 'gone')
  before = sorted(os.listdir(os.path.join(workdir, 'inspect')))
  mtimes = [os.path.getmtime(os.path.join(workdir, 'inspect', name)) for name in before]
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run.inspect(config, workdir)
  assert [os.path.getmtime(os.path.join(workdir, 'inspect', name)) for name in before] == mtimes


@pytest.mark.parametrize('model_type', ['ddpm', 'cddpm'])
def test_models_without_prototypes_are_refused_in_one_line(tmp_path, model_type):
  with pytest.raises(ValueError, match=r'needs a model with prototypes \(model.type pdm or spdm\)') as error:
    run.inspect(_config(model_type), str(tmp_path))
  assert '\n' not in str(error.value)
  assert not os.path.exists(tmp_path / 'inspect')


@pytest.mark.parametrize('field', ['max_rows', 'samples_per_prototype'])
def test_empty_inspect_settings_are_refused(tmp_path, field):
  config = _config('pdm')
  config.inspect[field] = 0
  with pytest.raises(ValueError, match=f'inspect.{field}=0 must be an integer >= 1'):
    run.inspect(config, str(tmp_path))


def test_command_line_refuses_ddpm(tmp_path):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--config=tests/tiny_cli_config.py:ddpm',
                           f'--workdir={tmp_path}', '--mode=inspect'], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --mode=inspect needs a model with prototypes (model.type pdm or spdm), not model.type=ddpm: use '
      '--mode=sample or --mode=eval for it.')


def test_pca_matches_the_covariance_eigenvectors():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(7, 4)) * np.array([3.0, 1.0, 0.5, 0.1])
  prototypes = rng.normal(size=(3, 4))
  points, projected, explained = inspection.pca_2d(features, prototypes)
  # Reference: eigenvectors of the covariance matrix, largest eigenvalues first.
  mean = features.mean(axis=0)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(features - mean, rowvar=False))
  order = np.argsort(eigenvalues)[::-1][:2]
  axes = eigenvectors[:, order]
  reference_points, reference_projected = (features - mean) @ axes, (prototypes - mean) @ axes
  signs = np.sign(np.sum(points * reference_points, axis=0))  # each axis is defined up to its sign
  np.testing.assert_allclose(points, reference_points * signs, atol=1e-10)
  np.testing.assert_allclose(projected, reference_projected * signs, atol=1e-10)
  np.testing.assert_allclose(explained, eigenvalues[order] / eigenvalues.sum())


def test_pca_of_points_on_a_line_by_hand():
  # Features on the line y = 2x through (1, 2): the first axis is (1, 2) / sqrt(5), the second carries nothing.
  features = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
  points, projected, explained = inspection.pca_2d(features, np.array([[1.0, 2.0], [3.0, 1.0]]))
  np.testing.assert_allclose(points[:, 0], [-np.sqrt(5), 0.0, np.sqrt(5)], atol=1e-12)  # positive largest loading
  np.testing.assert_allclose(points[:, 1], 0.0, atol=1e-12)
  # (3, 1) - mean (1, 2) = (2, -1): along the line 0 / sqrt(5) = 0, across it +-5 / sqrt(5).
  np.testing.assert_allclose(projected[:, 0], [0.0, 0.0], atol=1e-12)
  np.testing.assert_allclose(np.abs(projected[:, 1]), [0.0, np.sqrt(5)], atol=1e-12)
  np.testing.assert_allclose(explained, [1.0, 0.0], atol=1e-12)


def test_pca_refuses_a_single_feature():
  with pytest.raises(ValueError, match='at least two feature rows'):
    inspection.pca_2d(np.ones((1, 3)), np.ones((2, 3)))


def test_majority_and_purity_by_hand():
  predictions = np.array([[3, 3, 1, 3], [0, 1, 2, 1], [5, 5, 5, 5], [2, 7, 7, 2]])
  majority, purity = inspection.majority_and_purity(predictions)
  np.testing.assert_array_equal(majority, [3, 1, 5, 2])  # the tie 2 / 7 goes to the smaller digit
  np.testing.assert_allclose(purity, [0.75, 0.5, 1.0, 0.5])


def test_rows_spread_over_many_prototypes():
  np.testing.assert_array_equal(inspection.prototype_rows(10, 20), np.arange(10))
  np.testing.assert_array_equal(inspection.prototype_rows(10, 4), [0, 3, 6, 9])
  rows = inspection.prototype_rows(200, 20)
  assert len(np.unique(rows)) == 20 and rows[0] == 0 and rows[-1] == 199
  assert np.all(np.diff(rows) >= 10)  # evenly spread, not the first twenty


def test_cosine_similarity_by_hand():
  similarity = inspection.cosine_similarity(np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]]))
  half = np.sqrt(0.5)
  np.testing.assert_allclose(similarity, [[1, 0, -1, half], [0, 1, 0, half], [-1, 0, 1, -half],
                                          [half, half, -half, 1]], atol=1e-12)
