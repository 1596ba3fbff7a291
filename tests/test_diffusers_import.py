"""Tests for pdm_jax.models.diffusers_import: config mapping, key mapping, loading."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.models import diffusers_import
from pdm_jax.models import unet as unet_lib

# Small enough to init and run in a couple of seconds on CPU.
CONFIG = dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
              up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
              attention_head_dim=8, norm_num_groups=8)


def _diffusers_unet(**overrides):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  torch.manual_seed(0)
  model = diffusers.UNet2DModel(**{**CONFIG, **overrides}).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  return model


def _numpy_state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _assert_same_outputs(model, flax_model, params):
  """Our NHWC output equals diffusers' NCHW one on a random batch."""
  torch = pytest.importorskip('torch')
  sample = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
  timesteps = np.array([3, 999])
  with torch.no_grad():
    expected = model(torch.from_numpy(sample), torch.from_numpy(timesteps)).sample
  ours = flax_model.apply({'params': params}, sample.transpose(0, 2, 3, 1),
                          timesteps)
  np.testing.assert_allclose(ours, expected.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-4)


def test_unet_kwargs_from_diffusers_config_fills_diffusers_defaults():
  kwargs = diffusers_import.unet_kwargs_from_diffusers_config(
      {'_class_name': 'UNet2DModel', 'block_out_channels': [32, 64],
       'down_block_types': ['DownBlock2D', 'AttnDownBlock2D'],
       'up_block_types': ['AttnUpBlock2D', 'UpBlock2D'], 'sample_size': 32,
       'downsample_padding': 0, 'freq_shift': 1})
  assert kwargs['block_out_channels'] == (32, 64)
  assert kwargs['attention_head_dim'] == 8 and kwargs['norm_eps'] == 1e-5
  assert kwargs['downsample_padding'] == 0 and kwargs['freq_shift'] == 1
  assert kwargs['flip_sin_to_cos'] is True
  unet_lib.UNet2D(**kwargs)  # All keys are UNet2D fields.


@pytest.mark.parametrize('override, match', [
    ({'time_embedding_type': 'fourier'}, "time_embedding_type='fourier'"),
    ({'resnet_time_scale_shift': 'scale_shift'}, "resnet_time_scale_shift="),
    ({'class_embed_type': 'timestep'}, 'class_embed_type'),
    ({'_class_name': 'UNet2DConditionModel'}, 'not a UNet2DModel'),
    ({'down_block_types': ['DownBlock2D', 'CrossAttnDownBlock2D']},
     'unsupported down block type'),
])
def test_unsupported_config_options(override, match):
  with pytest.raises(ValueError, match=match):
    diffusers_import.unet_kwargs_from_diffusers_config({**CONFIG, **override})


def test_convert_matches_diffusers_and_maps_legacy_attention_names():
  model = _diffusers_unet()
  flax_model = unet_lib.UNet2D(
      **diffusers_import.unet_kwargs_from_diffusers_config(dict(model.config)))
  state_dict = _numpy_state_dict(model)
  params = diffusers_import.convert_diffusers_state_dict(state_dict, flax_model)
  _assert_same_outputs(model, flax_model, params)

  legacy_names = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value',
                  'to_out.0': 'proj_attn'}
  legacy = {}
  for key, value in state_dict.items():
    for new, old in legacy_names.items():
      key = key.replace(f'.{new}.', f'.{old}.')
    legacy[key] = value
  assert 'mid_block.attentions.0.proj_attn.weight' in legacy
  legacy_params = diffusers_import.convert_diffusers_state_dict(legacy, flax_model)
  np.testing.assert_array_equal(
      legacy_params['mid_block']['attentions_0']['to_out_0']['kernel'],
      params['mid_block']['attentions_0']['to_out_0']['kernel'])


def test_wrong_shape_missing_and_unused_keys_raise():
  model = _diffusers_unet()
  flax_model = unet_lib.UNet2D(
      **diffusers_import.unet_kwargs_from_diffusers_config(dict(model.config)))
  state_dict = _numpy_state_dict(model)

  bad = dict(state_dict, **{'conv_in.weight': np.zeros((16, 3, 5, 5))})
  with pytest.raises(ValueError, match=r'conv_in.weight has shape \(16, 3, 5, 5\) '
                     r'but UNet2D expects \(16, 3, 3, 3\)'):
    diffusers_import.convert_diffusers_state_dict(bad, flax_model)

  missing = {k: v for k, v in state_dict.items() if k != 'conv_out.bias'}
  with pytest.raises(ValueError, match='1 UNet2D params have no diffusers tensor.*'
                     'conv_out/bias'):
    diffusers_import.convert_diffusers_state_dict(missing, flax_model)

  extra = dict(state_dict, **{'extra.weight': np.zeros(3)})
  with pytest.raises(ValueError, match='1 diffusers tensors are unused.*extra.weight'):
    diffusers_import.convert_diffusers_state_dict(extra, flax_model)
  diffusers_import.convert_diffusers_state_dict(extra, flax_model, strict=False)

  prefixed = {f'unet.{k}': v for k, v in state_dict.items()}
  prefixed['prototypes'] = np.zeros((10, 64))
  diffusers_import.convert_diffusers_state_dict(prefixed, flax_model, prefix='unet.')


@pytest.mark.parametrize('safe_serialization', [True, False])
def test_load_saved_model_directory(tmp_path, safe_serialization):
  model = _diffusers_unet(num_class_embeds=4)
  model.save_pretrained(tmp_path / 'unet', safe_serialization=safe_serialization)
  expected_file = ('diffusion_pytorch_model.safetensors' if safe_serialization
                   else 'diffusion_pytorch_model.bin')
  assert (tmp_path / 'unet' / expected_file).exists()
  # A pipeline directory (with unet/) and a bare unet directory both load.
  for directory in (tmp_path, tmp_path / 'unet'):
    flax_model, params = diffusers_import.load_diffusers_unet(str(directory))
  assert flax_model.num_class_embeds == 4
  torch = pytest.importorskip('torch')
  sample = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
  labels = np.array([1, 3])
  with torch.no_grad():
    expected = model(torch.from_numpy(sample), torch.tensor([5, 500]),
                     class_labels=torch.from_numpy(labels)).sample.numpy()
  ours = flax_model.apply({'params': params}, sample.transpose(0, 2, 3, 1),
                          jnp.array([5, 500]), class_labels=labels)
  np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-4)


def test_load_detects_reference_pdm_bottleneck(tmp_path):
  torch = pytest.importorskip('torch')
  model = _diffusers_unet()
  # Same tensors as the reference PDM's Unet.bottleneck_attn (embed 32, 8 heads).
  attn = torch.nn.MultiheadAttention(32, 8, batch_first=True)
  state_dict = _numpy_state_dict(model)
  state_dict.update({f'bottleneck_attn.{k}': v.detach().numpy()
                     for k, v in attn.state_dict().items()})
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(state_dict, str(tmp_path / 'diffusion_pytorch_model.safetensors'))
  (tmp_path / 'config.json').write_text(json.dumps(dict(model.config)))
  flax_model, params = diffusers_import.load_diffusers_unet(str(tmp_path))
  assert flax_model.bottleneck_attention and flax_model.bottleneck_num_heads == 8
  np.testing.assert_allclose(params['bottleneck_attn']['k_proj']['kernel'],
                             attn.in_proj_weight.detach().numpy()[32:64].T)


def test_missing_weights_file(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps(CONFIG))
  with pytest.raises(ValueError, match='no diffusion_pytorch_model.safetensors'):
    diffusers_import.load_diffusers_unet(str(tmp_path))
  with pytest.raises(ValueError, match='no config.json'):
    diffusers_import.load_diffusers_unet(str(tmp_path / 'nowhere'))


# --- scripts/sample_pretrained.py ---------------------------------------------

def _sample_script():
  """Imports scripts/sample_pretrained.py once (it defines absl flags)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if 'sample_pretrained' not in sys.modules:
    path = os.path.join(os.path.dirname(__file__), '..', 'scripts',
                        'sample_pretrained.py')
    spec = importlib.util.spec_from_file_location('sample_pretrained', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules['sample_pretrained'] = module
  return sys.modules['sample_pretrained']


def test_schedule_from_scheduler_config():
  script = _sample_script()
  schedule, prediction = script.schedule_from_scheduler_config(
      {'num_train_timesteps': 20, 'beta_schedule': 'scaled_linear',
       'beta_start': 1e-3, 'beta_end': 0.04, 'prediction_type': 'v_prediction'})
  assert schedule.num_timesteps == 20 and prediction == 'v'
  np.testing.assert_allclose(schedule.betas[-1], 0.04, rtol=1e-5)
  schedule, prediction = script.schedule_from_scheduler_config({})
  assert schedule.num_timesteps == 1000 and prediction == 'epsilon'
  with pytest.raises(ValueError, match="beta_schedule='sigmoid'"):
    script.schedule_from_scheduler_config({'beta_schedule': 'sigmoid'})


def test_sample_pretrained_end_to_end(tmp_path):
  from pdm_jax import sampling  # pylint: disable=g-import-not-at-top
  if not hasattr(sampling, 'sample'):
    pytest.skip('pdm_jax.sampling.sample is not written yet')
  script = _sample_script()
  model = _diffusers_unet()
  model.save_pretrained(tmp_path / 'pipe' / 'unet')
  (tmp_path / 'pipe' / 'scheduler').mkdir()
  (tmp_path / 'pipe' / 'scheduler' / 'scheduler_config.json').write_text(
      json.dumps({'_class_name': 'DDPMScheduler', 'num_train_timesteps': 50,
                  'beta_schedule': 'linear', 'beta_start': 1e-4,
                  'beta_end': 0.02}))
  out = tmp_path / 'out' / 'samples.npz'
  images = script.sample_pretrained(str(tmp_path / 'pipe'), str(out),
                                    num_samples=3, method='ddim', num_steps=3,
                                    batch_size=2)
  assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.load(out)['images'], images)
  assert (tmp_path / 'out' / 'samples.png').exists()
