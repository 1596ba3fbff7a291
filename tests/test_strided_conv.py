"""f_phi's 4x4 stride-2 convolution as a stride-1 one: the same function and gradients as the strided convolution
(torch's padding 1, even and odd sizes), and the same parameters and initialisation as flax's nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.models import strided_conv


def _strided(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')


@pytest.mark.parametrize('height,width', [(8, 8), (7, 7), (9, 6), (2, 3), (32, 32)])
def test_outputs_and_gradients_match_the_strided_convolution(height, width):
  rng = np.random.default_rng(height * 100 + width)
  x = rng.standard_normal((2, height, width, 3)).astype(np.float32)
  kernel = rng.standard_normal((4, 4, 3, 5)).astype(np.float32)
  weights = rng.standard_normal(_strided(x, kernel).shape).astype(np.float32)  # a weighted sum reaches every output
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k) * weights)
  ours = jax.jit(strided_conv.conv4x4_stride2)(x, kernel)
  np.testing.assert_allclose(ours, _strided(x, kernel), rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.grad(loss(strided_conv.conv4x4_stride2), argnums=(0, 1))(x, kernel),
                       jax.grad(loss(_strided), argnums=(0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_parameters_and_initialisation_are_nn_conv_s():
  x = jnp.ones((1, 8, 8, 3))
  ours = strided_conv.Conv4x4Stride2(6).init(jax.random.PRNGKey(3), x)
  theirs = nn.Conv(6, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1))).init(jax.random.PRNGKey(3), x)
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)
  for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(got, want)
  no_bias = strided_conv.Conv4x4Stride2(6, use_bias=False).init(jax.random.PRNGKey(3), x)
  assert set(no_bias['params']) == {'kernel'}
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
  np.testing.assert_allclose(strided_conv.Conv4x4Stride2(6).apply(theirs, x),
                             nn.Conv(6, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1))).apply(theirs, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('padding', [1, 0])
def test_3x3_downsampling_matches_nn_conv_outputs_gradients_and_parameters(padding):
  # Downsample2D: torch's padding 1 (padding=1) or old diffusers checkpoints' bottom / right padding (padding=0).
  flax_padding = ((1, 1), (1, 1)) if padding == 1 else ((0, 1), (0, 1))
  theirs = nn.Conv(5, (3, 3), strides=(2, 2), padding=flax_padding)
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 6, 3))
  params = theirs.init(jax.random.PRNGKey(6), x)
  ours = strided_conv.Conv3x3Stride2(5, padding)
  for got, want in zip(jax.tree.leaves(ours.init(jax.random.PRNGKey(6), x)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(got, want)
  weights = jax.random.normal(jax.random.PRNGKey(7), (2, 4, 3, 5))
  loss = lambda module: lambda p, x: jnp.sum(module.apply(p, x) * weights)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                       jax.tree.leaves(jax.grad(loss(theirs), argnums=(0, 1))(params, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match='even heights and widths'):
    ours.apply(params, jnp.ones((1, 7, 8, 3)))
