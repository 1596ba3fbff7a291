"""Mixed precision (bf16 compute, float32 parameters / losses / statistics) and rematerialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu.metric_writers import logging_writer

from pdm_jax.models import factory
from pdm_jax.models import unet as unet_lib
from pdm_jax.training import loop
from pdm_jax.training import state as state_lib
from tests.conftest import tiny_config

_UNET = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
             down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
             norm_num_groups=8, dropout=0.1)


def _inputs(size=16):
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32), jnp.array([5, 900])


def test_remat_gives_the_same_outputs_and_gradients_with_the_same_parameters():
  x, t = _inputs()
  plain, remat = unet_lib.UNet2D(**_UNET), unet_lib.UNet2D(**_UNET, remat=True)
  params = plain.init(jax.random.PRNGKey(0), x, t)
  assert jax.tree.structure(remat.init(jax.random.PRNGKey(0), x, t)) == jax.tree.structure(params)
  rngs = {'dropout': jax.random.PRNGKey(1)}  # train=True: dropout must draw the same masks when recomputed
  loss = lambda model: lambda p: jnp.sum(model.apply(p, x, t, train=True, rngs=rngs)**2)
  np.testing.assert_allclose(remat.apply(params, x, t, train=True, rngs=rngs),
                             plain.apply(params, x, t, train=True, rngs=rngs), rtol=1e-6, atol=1e-6)
  grads, expected = (jax.tree.leaves(jax.grad(loss(model))(params)) for model in (remat, plain))
  # Recomputation changes the reduction order: equal to float32 rounding of the gradient's scale (attention key
  # biases have an exactly-zero gradient, so only rounding noise to compare there).
  scale = max(float(np.abs(leaf).max()) for leaf in expected)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
  assert 'remat' in str(jax.make_jaxpr(jax.grad(loss(remat)))(params))


def test_remat_lowers_the_compiled_backward_memory():
  x, t = (jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((8,), jnp.int32))
  temp = {}
  for remat in (False, True):
    model = unet_lib.UNet2D(**{**_UNET, 'dropout': 0.0}, remat=remat)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.zeros(t.shape, int)))
    grad = jax.grad(lambda p, x, t: jnp.sum(model.apply(p, x, t)**2))
    temp[remat] = jax.jit(grad).lower(params, x, t).compile().memory_analysis().temp_size_in_bytes
  print(f'backward temp bytes: {temp[False]} without remat, {temp[True]} with')
  assert temp[True] < 0.8 * temp[False]


def _model(dtype: str, model_type: str = 'pdm'):
  config = tiny_config(model_type)
  config.model.dtype = dtype
  return factory.build_model(config.model, image_size=8, num_channels=1, num_classes=10)


def test_bfloat16_computes_in_bf16_with_float32_parameters_and_outputs():
  fp32, bf16 = _model('float32'), _model('bfloat16')
  variables = state_lib.init_variables(fp32, jax.random.PRNGKey(0), (8, 8, 1))
  assert {leaf.dtype for leaf in jax.tree.leaves(state_lib.init_variables(bf16, jax.random.PRNGKey(0), (8, 8, 1)))
          } == {jnp.dtype(jnp.float32)}
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  t = jnp.array([1, 10, 30, 49])
  apply = lambda model: lambda v: model.apply(v, images, t, clean_images=images, train=False)
  (out32, aux32), (out16, aux16) = apply(fp32)(variables), apply(bf16)(variables)
  assert out16.dtype == jnp.float32 and aux16['prototype_loss'].dtype == jnp.float32
  # bf16 keeps 8 bits of mantissa: the two agree to about 1e-2, and are not equal (bf16 really ran).
  error = float(jnp.abs(out16 - out32).max() / jnp.abs(out32).max())
  assert 1e-5 < error < 5e-2, error
  np.testing.assert_allclose(aux16['prototype_loss'], aux32['prototype_loss'], rtol=5e-2)
  hlo = jax.jit(apply(bf16)).lower(variables).as_text()
  assert 'bf16' in hlo and 'convolution' in hlo


def test_unknown_dtype_is_a_one_line_error():
  with pytest.raises(ValueError, match="model.dtype='float16' is not supported: use one of float32, bfloat16"):
    _model('float16')


class _RecordingWriter(logging_writer.LoggingWriter):
  """Keeps every scalar written, by name."""

  def __init__(self):
    super().__init__()
    self.scalars: dict[str, list[float]] = {}

  def write_scalars(self, step, scalars):
    for key, value in scalars.items():
      self.scalars.setdefault(key, []).append(float(value))


def _diffusion_losses(dtype: str, workdir: str) -> list[float]:
  config = tiny_config('spdm', num_steps=120, learning_rate=3e-3, log_every=20, checkpoint_every=1000)
  config.model.dtype = dtype
  writer = _RecordingWriter()
  loop.train(config, workdir, writer=writer)
  return writer.scalars['diffusion_loss']


def test_a_bfloat16_digits_run_trains_like_float32(tmp_path):
  fp32 = _diffusion_losses('float32', str(tmp_path / 'fp32'))
  bf16 = _diffusion_losses('bfloat16', str(tmp_path / 'bf16'))
  print('diffusion loss per 20 steps, fp32:', np.round(fp32, 4), 'bf16:', np.round(bf16, 4))
  assert fp32[-1] < 0.7 * fp32[0]
  assert bf16[-1] < 0.7 * bf16[0]
  assert bf16[-1] < 1.2 * fp32[-1]
