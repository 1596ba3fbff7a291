"""Tests for pdm_jax.models.unet: shapes, config errors, diffusers parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.models import unet as unet_lib

# Tiny two-level config: 8x8 images, 16/32 channels, attention at level 1.
TINY = dict(block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
            up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
            attention_head_dim=8, norm_num_groups=8)


def _init(model, batch=2, size=8, **kwargs):
  x = jnp.zeros((batch, size, size, model.in_channels))
  t = jnp.zeros((batch,), jnp.int32)
  return x, t, model.init(jax.random.PRNGKey(0), x, t, **kwargs)


def test_output_shape_and_param_names():
  model = unet_lib.UNet2D(out_channels=5, **TINY)
  x, t, variables = _init(model)
  out = model.apply(variables, x + 0.1, jnp.array([3, 700]))
  assert out.shape == (2, 8, 8, 5)
  params = variables['params']
  assert set(params) == {'conv_in', 'time_embedding', 'down_blocks_0',
                         'down_blocks_1', 'mid_block', 'up_blocks_0',
                         'up_blocks_1', 'conv_norm_out', 'conv_out'}
  assert set(params['down_blocks_1']['attentions_0']) == {
      'group_norm', 'to_q', 'to_k', 'to_v', 'to_out_0'}
  assert 'downsamplers_0' in params['down_blocks_0']
  assert 'downsamplers_0' not in params['down_blocks_1']
  assert 'upsamplers_0' in params['up_blocks_0']
  assert 'upsamplers_0' not in params['up_blocks_1']
  # The first up block concatenates a 32-channel skip; the shortcut maps to 32.
  assert params['up_blocks_0']['resnets_0']['conv_shortcut']['kernel'].shape == (
      1, 1, 64, 32)


def test_scalar_and_float_timesteps():
  model = unet_lib.UNet2D(**TINY)
  x, _, variables = _init(model)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  a = model.apply(variables, x, 5)
  b = model.apply(variables, x, jnp.array([5.0, 5.0]))
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_downsample_pads_symmetrically():
  # A stride-2 conv with padding 1 on both sides sees pixel (0, 0) at output (0, 0).
  model = unet_lib.unet_blocks.Downsample2D(channels=1)
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
  params = model.init(jax.random.PRNGKey(0), x)
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
  params = {'params': {'conv': {'kernel': kernel, 'bias': jnp.zeros(1)}}}
  out = model.apply(params, x)
  assert out.shape == (1, 2, 2, 1)
  assert out[0, 0, 0, 0] == 1.0


def test_dropout_eval_deterministic_train_random():
  model = unet_lib.UNet2D(dropout=0.5, **TINY)
  x, t, variables = _init(model)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  a = model.apply(variables, x, t)
  b = model.apply(variables, x, t)
  np.testing.assert_array_equal(a, b)
  c = model.apply(variables, x, t, train=True,
                  rngs={'dropout': jax.random.PRNGKey(1)})
  d = model.apply(variables, x, t, train=True,
                  rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(c, d)


def test_class_conditioning():
  model = unet_lib.UNet2D(num_class_embeds=10, **TINY)
  x, t, variables = _init(model, class_labels=jnp.zeros((2,), jnp.int32))
  assert variables['params']['class_embedding']['embedding'].shape == (10, 64)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  a = model.apply(variables, x, t, class_labels=jnp.array([0, 1]))
  b = model.apply(variables, x, t, class_labels=jnp.array([0, 2]))
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)
  assert not np.allclose(a[1], b[1])
  with pytest.raises(ValueError, match='class_labels'):
    model.apply(variables, x, t)


def test_bottleneck_attention_uses_context():
  model = unet_lib.UNet2D(bottleneck_attention=True, bottleneck_num_heads=4,
                          **TINY)
  context = jnp.ones((2, 3, 12))  # D=12 differs from C=32.
  x, t, variables = _init(model, context=context)
  bottleneck = variables['params']['bottleneck_attn']
  assert bottleneck['k_proj']['kernel'].shape == (12, 32)
  assert bottleneck['q_proj']['kernel'].shape == (32, 32)
  x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  ctx = jax.random.normal(jax.random.PRNGKey(2), context.shape)
  a = model.apply(variables, x, t, context=ctx)
  b = model.apply(variables, x, t, context=ctx * 2)
  assert a.shape == (2, 8, 8, 3) and not np.allclose(a, b)
  with pytest.raises(ValueError, match='context'):
    model.apply(variables, x, t)


@pytest.mark.parametrize('kwargs, match', [
    (dict(image_size=30, block_out_channels=(8, 8, 8, 8), norm_num_groups=8),
     'image_size=30 cannot be halved 3 times.*multiple of 8 such as 32'),
    (dict(image_size=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=8),
     'such as 8'),
    (dict(image_size=32, block_out_channels=(32, 48), norm_num_groups=32),
     '48 channels, not divisible by norm_num_groups=32'),
    (dict(image_size=32, block_out_channels=(32, 64), down_block_types=(
        'DownBlock2D',)), 'down_block_types has 1 entries'),
    (dict(image_size=32, block_out_channels=(32, 64), up_block_types=(
        'UpBlock2D', 'CrossAttnUpBlock2D')),
     "unsupported up block type 'CrossAttnUpBlock2D': use one of UpBlock2D, "
     'AttnUpBlock2D'),
    (dict(image_size=32, block_out_channels=(32, 64), attention_head_dim=128),
     'attention_head_dim=128'),
    (dict(image_size=32, block_out_channels=(32, 36), norm_num_groups=4,
          bottleneck_attention=True), 'bottleneck_num_heads=8'),
])
def test_check_unet_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    unet_lib.check_unet_config(**kwargs)


def test_check_unet_config_accepts_defaults():
  unet_lib.check_unet_config(32, (128, 256, 256, 256), 32,
                             unet_lib.UNet2D.down_block_types,
                             unet_lib.UNet2D.up_block_types,
                             bottleneck_attention=True)
  unet_lib.check_unet_config((16, 24), (32, 64), 32)


def test_call_rejects_bad_image_size():
  model = unet_lib.UNet2D(**TINY)
  with pytest.raises(ValueError, match='image_size=7'):
    _init(model, size=7)


# --- Parity with diffusers' UNet2DModel (and the reference PDM Unet) ---------

PARITY_CONFIG = dict(sample_size=8, in_channels=3, out_channels=3,
                     block_out_channels=(32, 64), layers_per_block=2,
                     down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                     up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
                     attention_head_dim=8, norm_num_groups=8)


def _randomized_diffusers_unet(torch, cls=None, **overrides):
  """A diffusers UNet2DModel whose every weight (norms included) is random."""
  diffusers = pytest.importorskip('diffusers')
  torch.manual_seed(0)
  model = (cls or diffusers.UNet2DModel)(**{**PARITY_CONFIG, **overrides}).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  return model


def _max_relative_error(ours, theirs):
  """max |ours - theirs| / max |theirs| over NHWC arrays."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _compare(torch, model, flax_model, torch_kwargs=None, flax_kwargs=None):
  from pdm_jax.models import diffusers_import  # pylint: disable=g-import-not-at-top
  params = diffusers_import.convert_diffusers_state_dict(
      model.state_dict(), flax_model)
  rng = np.random.default_rng(0)
  sample = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
  timesteps = np.array([10, 873])
  with torch.no_grad():
    expected = model(torch.from_numpy(sample), torch.from_numpy(timesteps),
                     **(torch_kwargs or {})).sample.numpy()
  ours = flax_model.apply({'params': params}, sample.transpose(0, 2, 3, 1),
                          timesteps, **(flax_kwargs or {}))
  error = _max_relative_error(ours, expected.transpose(0, 2, 3, 1))
  print(f'max relative error vs diffusers: {error:.2e}')
  assert error < 1e-4
  return error


def _flax_unet(**kwargs):
  config = {k: v for k, v in PARITY_CONFIG.items() if k != 'sample_size'}
  return unet_lib.UNet2D(**{**config, **kwargs})


def test_parity_with_diffusers():
  torch = pytest.importorskip('torch')
  _compare(torch, _randomized_diffusers_unet(torch), _flax_unet())


def test_parity_with_diffusers_old_style_options():
  # google/ddpm-cifar10-32 style: one head, sin-first embedding, shift 1,
  # bottom/right-padded downsampling, eps 1e-6.
  torch = pytest.importorskip('torch')
  options = dict(attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
                 downsample_padding=0, norm_eps=1e-6)
  _compare(torch, _randomized_diffusers_unet(torch, **options),
           _flax_unet(**options))


def test_parity_with_diffusers_class_conditional():
  torch = pytest.importorskip('torch')
  labels = np.array([3, 7])
  _compare(torch, _randomized_diffusers_unet(torch, num_class_embeds=10),
           _flax_unet(num_class_embeds=10),
           dict(class_labels=torch.from_numpy(labels)),
           dict(class_labels=labels))


def test_parity_with_reference_pdm_bottleneck():
  torch = pytest.importorskip('torch')
  pytest.importorskip('diffusers')
  # The reference PDM's Unet (UNet2DModel + nn.MultiheadAttention at the bottleneck), as the torch benchmark runs it.
  from scripts import torch_reference  # pylint: disable=g-import-not-at-top
  model = _randomized_diffusers_unet(torch, cls=torch_reference.ReferenceUnet)
  context = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
  error = _compare(torch, model, _flax_unet(bottleneck_attention=True),
                   dict(prototype=torch.from_numpy(context)),
                   dict(context=context))
  # The bottleneck must matter, or the check above proves nothing about it.
  sample, timesteps = torch.zeros(2, 3, 8, 8), torch.tensor([10, 873])
  with torch.no_grad():
    a = model(sample, timesteps, prototype=torch.from_numpy(context)).sample
    b = model(sample, timesteps, prototype=torch.from_numpy(-context)).sample
  assert _max_relative_error(a, b) > 100 * error
