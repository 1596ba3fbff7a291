"""Tests for pdm_jax.models.diffusers_export and scripts/export_diffusers.py: diffusers itself loads what we write and
computes the same noise prediction; our importer reads it back to the same params."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip('torch')  # before jax-heavy imports (see conftest)
diffusers = pytest.importorskip('diffusers')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
from flax import traverse_util

from pdm_jax import diffusion
from pdm_jax import run
from pdm_jax.inference import restore
from pdm_jax.models import diffusers_export
from pdm_jax.models import diffusers_format
from pdm_jax.models import diffusers_import
from pdm_jax.models import factory
from tests.conftest import REPO
from tests.conftest import tiny_config
# pylint: enable=g-import-not-at-top,wrong-import-position

IMAGE_SIZE, CHANNELS, CLASSES = 8, 3, 10


def _model_and_params(model_type: str, seed: int = 0, null_class: bool = False):
  """A tiny DiffusionModel of `model_type` and random params of init's shapes (drawn in numpy: init itself takes
  tens of seconds to compile on a CPU). Norm scales and biases are random too, so no layer is an identity."""
  config = tiny_config(model_type)
  model = factory.build_model(config.model, image_size=IMAGE_SIZE, num_channels=CHANNELS,
                              num_classes=CLASSES if config.data.use_labels else None, null_class=null_class)
  args, kwargs = model.kind.init_inputs((IMAGE_SIZE, IMAGE_SIZE, CHANNELS))
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda: model.init({'params': key, 'dropout': key}, *args, **kwargs))
  shapes = traverse_util.flatten_dict(variables['params'])
  rng = np.random.default_rng(seed)
  params = {}
  for path, leaf in shapes.items():
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if path[-1] == 'kernel' else 1
    value = noise / np.sqrt(fan_in) if path[-1] != 'scale' else 1.0 + 0.1 * noise
    params[path] = value.astype(np.float32)  # as init's
  return config, model, traverse_util.unflatten_dict(params)


def _export(tmp_path, model_type: str, null_class: bool = False):
  config, model, params = _model_and_params(model_type, null_class=null_class)
  output = str(tmp_path / f'{model_type}{"_null" if null_class else ""}')
  diffusers_export.export_pipeline(model, params, IMAGE_SIZE, config.diffusion, output)
  return config, model, params, output


@pytest.mark.parametrize('model_type,null_class', [('ddpm', False), ('cddpm', False), ('cddpm', True),
                                                   ('protodiffusion', False), ('protodiffusion', True)])
def test_diffusers_unet_predicts_our_noise(tmp_path, model_type, null_class):
  _, model, params, output = _export(tmp_path, model_type, null_class)
  unet, info = diffusers.UNet2DModel.from_pretrained(os.path.join(output, 'unet'), output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched tensor
  unet.eval()
  rng = np.random.default_rng(0)
  x_t = rng.standard_normal((3, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)).astype(np.float32)
  t = np.array([0, 17, 49])
  labels = np.array([2, 9, 2]) if model.kind.class_conditional else None
  ours, _ = model.apply({'params': params}, x_t, t, labels=labels)
  with torch.no_grad():
    theirs = unet(torch.from_numpy(x_t.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                  class_labels=None if labels is None else torch.from_numpy(labels)).sample.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  # The class embedding is used: another class changes the prediction.
  if labels is not None:
    other, _ = model.apply({'params': params}, x_t, t, labels=(labels + 1) % CLASSES)
    assert np.abs(np.asarray(other) - np.asarray(ours)).max() > 1e-3
  if null_class:
    # The null condition of classifier-free guidance is the table's last row, label CLASSES, as cddpm's.
    dropped, _ = model.apply({'params': params}, x_t, t, labels=labels, drop_condition=np.ones(3, bool))
    with torch.no_grad():
      theirs = unet(torch.from_numpy(x_t.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                    class_labels=torch.full((3,), CLASSES)).sample.numpy()
    np.testing.assert_allclose(np.asarray(dropped), theirs.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('model_type', ['ddpm', 'cddpm'])
def test_export_then_import_gives_identical_params(tmp_path, model_type):
  _, model, params, output = _export(tmp_path, model_type)
  module, imported = diffusers_import.load_diffusers_unet(output)
  ours = model.make_unet()
  for field in diffusers_format.COPIED_KEYS + ('block_out_channels', 'down_block_types', 'up_block_types',
                                               'bottleneck_attention'):
    assert getattr(module, field) == getattr(ours, field), field
  expected = traverse_util.flatten_dict(params['unet'])
  got = traverse_util.flatten_dict(imported)
  assert set(got) == set(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg='/'.join(path))


def test_folder_layout_and_model_index(tmp_path):
  _, _, _, ddpm_dir = _export(tmp_path, 'ddpm')
  _, _, _, cddpm_dir = _export(tmp_path, 'cddpm')
  with open(os.path.join(ddpm_dir, 'model_index.json')) as f:
    index = json.load(f)
  assert index['_class_name'] == 'DDPMPipeline'
  assert index['unet'] == ['diffusers', 'UNet2DModel'] and index['scheduler'] == ['diffusers', 'DDPMScheduler']
  pipeline = diffusers.DDPMPipeline.from_pretrained(ddpm_dir)
  assert pipeline.unet.config.sample_size == IMAGE_SIZE and pipeline.scheduler.config.num_train_timesteps == 50
  # DDPMPipeline passes no class labels: a class-conditional export is a UNet and a scheduler, not a pipeline.
  assert not os.path.exists(os.path.join(cddpm_dir, 'model_index.json'))
  assert os.path.isfile(os.path.join(cddpm_dir, 'scheduler', 'scheduler_config.json'))
  # The weights are as readable as the configs beside them (the umask decides, not the writer).
  modes = {os.stat(os.path.join(ddpm_dir, 'unet', name)).st_mode
           for name in ('config.json', diffusers_export.WEIGHTS_FILE)}
  assert len(modes) == 1, modes


@pytest.mark.parametrize('schedule,prediction_type,diffusers_name,diffusers_prediction', [
    ('linear', 'epsilon', 'linear', 'epsilon'),
    ('cosine', 'v', 'squaredcos_cap_v2', 'v_prediction'),
    ('quad', 'sample', 'scaled_linear', 'sample'),
])
def test_scheduler_config_loads_into_ddpm_scheduler_with_our_betas(tmp_path, schedule, prediction_type,
                                                                   diffusers_name, diffusers_prediction):
  config = tiny_config('ddpm').diffusion
  config.num_timesteps, config.schedule, config.prediction_type = 1000, schedule, prediction_type
  config.beta_start, config.beta_end = 2e-4, 0.03
  path = tmp_path / 'scheduler' / 'scheduler_config.json'
  path.parent.mkdir()
  path.write_text(json.dumps(diffusers_export.scheduler_config(config)))
  scheduler = diffusers.DDPMScheduler.from_pretrained(str(tmp_path), subfolder='scheduler')
  assert scheduler.config.beta_schedule == diffusers_name
  assert scheduler.config.prediction_type == diffusers_prediction
  ours = diffusion.make_schedule(schedule, 1000, 2e-4, 0.03)
  np.testing.assert_allclose(scheduler.betas.numpy(), np.asarray(ours.betas), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), np.asarray(ours.alphas_cumprod), rtol=1e-5, atol=1e-6)


def test_scheduler_config_refuses_what_diffusers_cannot_express():
  config = tiny_config('ddpm').diffusion
  config.schedule = 'sigmoid'
  with pytest.raises(ValueError, match="diffusion.schedule='sigmoid' has no diffusers DDPMScheduler beta_schedule"):
    diffusers_export.scheduler_config(config)
  config.schedule, config.prediction_type = 'linear', 'x0'
  with pytest.raises(ValueError, match="prediction_type='x0' has no diffusers counterpart"):
    diffusers_export.scheduler_config(config)


@pytest.mark.parametrize('model_type, message', [
    ('pdm', 'a diffusers UNet2DModel cannot express'), ('spdm', 'a diffusers UNet2DModel cannot express')])
def test_prototype_models_are_refused(tmp_path, model_type, message):
  config = tiny_config(model_type)
  model = factory.build_model(config.model, image_size=IMAGE_SIZE, num_channels=CHANNELS, num_classes=CLASSES)
  output = tmp_path / 'out'
  with pytest.raises(ValueError, match=f'model.type={model_type}.* {message}'):
    diffusers_export.export_pipeline(model, {'unet': {}, 'memory': {}}, IMAGE_SIZE, config.diffusion, str(output))
  assert not output.exists()


def test_bad_params_and_used_output_are_refused(tmp_path):
  config, ddpm, _ = _model_and_params('ddpm')
  _, _, cddpm_params = _model_and_params('cddpm')
  with pytest.raises(ValueError, match=r'params do not fit the UNet .*class_embedding/embedding'):
    diffusers_export.export_pipeline(ddpm, cddpm_params, IMAGE_SIZE, config.diffusion, str(tmp_path / 'a'))
  assert not (tmp_path / 'a').exists()  # nothing written before the checks
  used = tmp_path / 'used'
  used.mkdir()
  (used / 'notes.txt').write_text('keep me')
  with pytest.raises(ValueError, match='is not empty: export into a new or empty directory'):
    diffusers_export.export_pipeline(ddpm, cddpm_params, IMAGE_SIZE, config.diffusion, str(used))


def _export_script(*args):
  return subprocess.run([sys.executable, os.path.join('scripts', 'export_diffusers.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_export_script_on_a_trained_workdir(tmp_path):
  config = tiny_config('ddpm', num_steps=2)
  workdir = str(tmp_path / 'run')
  run.train_and_evaluate(config, workdir)
  output = str(tmp_path / 'export')
  result = _export_script('--config=tests/tiny_cli_config.py:ddpm', '--config.train.num_steps=2',
                          f'--workdir={workdir}', f'--output={output}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Wrote 4 files' in result.stdout

  pipeline = diffusers.DDPMPipeline.from_pretrained(output)
  # EMA parameters by default: after two steps they differ from the raw ones.
  experiment, state = restore.restore_latest(config, workdir)
  experiment.checkpointer.close()
  exported = pipeline.unet.conv_in.weight.detach().numpy()
  ema = diffusers_format.to_torch_layout('kernel', np.asarray(state.ema_params['unet']['conv_in']['kernel']))
  raw = diffusers_format.to_torch_layout('kernel', np.asarray(state.params['unet']['conv_in']['kernel']))
  np.testing.assert_array_equal(exported, ema)
  assert not np.array_equal(ema, raw)
  images = pipeline(batch_size=2, num_inference_steps=3, output_type='np',
                    generator=torch.Generator().manual_seed(0)).images
  assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()

  # A pdm run is refused with one line, before any checkpoint is read.
  refused = _export_script('--config=tests/tiny_cli_config.py:pdm', f'--workdir={workdir}',
                           f'--output={tmp_path / "pdm"}')
  assert refused.returncode != 0
  assert refused.stderr.strip().splitlines()[-1].startswith('error: model.type=pdm conditions the UNet bottleneck')
