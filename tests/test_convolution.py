"""The model's stride-1 convolution (models/convolution.py): the function and gradients of lax.conv, nn.Conv's
parameters, and a backward pass that XLA:CPU compiles to library convolutions inside a lax.scan, where autodiff's
own is compiled to naive loops (the gradient accumulation step ran 40x slower)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.models import convolution

_CANONICAL = 'dim_labels=b01f_01io->b01f'


def _lax_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')


@pytest.mark.parametrize('channels', [(5, 4), (3, 6), (5, 16)])  # 16 outputs: the C++ kernel gradient
@pytest.mark.parametrize('kernel_size,padding', [
    ((3, 3), ((1, 1), (1, 1))), ((1, 1), ((0, 0), (0, 0))), ((2, 2), ((0, 0), (0, 0))), ((3, 2), ((2, 0), (1, 3))),
    ((1, 1), ((1, 0), (0, 1)))])
def test_outputs_and_gradients_match_lax_conv(kernel_size, padding, channels):
  rng = np.random.default_rng(sum(kernel_size))
  x = rng.standard_normal((3, 7, 6, channels[0])).astype(np.float32)
  kernel = rng.standard_normal((*kernel_size, *channels)).astype(np.float32)
  want = _lax_conv(x, kernel, padding)
  np.testing.assert_allclose(jax.jit(convolution.conv2d, static_argnums=2)(x, kernel, padding), want,
                             rtol=1e-5, atol=1e-5)
  weights = rng.standard_normal(want.shape).astype(np.float32)  # a weighted sum reaches every output
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k, padding) * weights)
  for got, expected in zip(jax.grad(loss(convolution.conv2d), argnums=(0, 1))(x, kernel),
                           jax.grad(loss(_lax_conv), argnums=(0, 1))(x, kernel)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_module_has_nn_conv_s_parameters_initialisation_and_outputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  for kernel_size, padding in (((3, 3), ((1, 1), (1, 1))), ((1, 1), ((0, 0), (0, 0)))):
    theirs = nn.Conv(6, kernel_size, padding=padding)
    params = theirs.init(jax.random.PRNGKey(1), x)
    ours = convolution.Conv(6, kernel_size, padding)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
    for got, want in zip(jax.tree.leaves(ours.init(jax.random.PRNGKey(1), x)), jax.tree.leaves(params)):
      np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
  bf16 = convolution.Conv(6, (1, 1), ((0, 0), (0, 0)), dtype=jnp.bfloat16).apply(params, x)
  assert bf16.dtype == jnp.bfloat16


def _convolutions_of_scanned_gradient(conv) -> list[str]:
  """The convolution instructions of the compiled gradient of two convolutions (32 -> 48 -> 32 channels) over
  micro-batches in a lax.scan."""
  def loss(kernels, x):
    return jnp.sum(jnp.tanh(conv(jnp.tanh(conv(x, kernels[0], ((1, 1), (1, 1)))), kernels[1], ((1, 1), (1, 1)))))

  def accumulated_gradient(kernels, images):
    step = lambda total, micro: (jax.tree.map(jnp.add, total, jax.grad(loss)(kernels, micro)), None)
    return jax.lax.scan(step, jax.tree.map(jnp.zeros_like, kernels), images)[0]

  kernels = (jnp.ones((3, 3, 32, 48)), jnp.ones((3, 3, 48, 32)))
  compiled = jax.jit(accumulated_gradient).lower(kernels, jnp.ones((2, 2, 8, 8, 32))).compile()
  return [line for line in compiled.as_text().splitlines() if re.search(r'\bconvolution\(', line)]


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='a property of XLA:CPU compilation')
def test_backward_pass_inside_a_scan_compiles_to_canonical_convolutions(monkeypatch):
  # The C++ kernels (tests/test_conv_weight_grad_kernel.py, tests/test_winograd_kernel.py) take some of them; the
  # rest are forward-shaped (here the 32 -> 48 forward convolution and the input gradient into its 48 channels).
  with_kernel = _convolutions_of_scanned_gradient(convolution.conv2d)
  assert len(with_kernel) >= 2 and all(_CANONICAL in line for line in with_kernel), with_kernel
  monkeypatch.setenv('PDM_JAX_CPU_CONV_KERNEL', '0')  # XLA's route for the kernel gradient: canonical too
  ours = _convolutions_of_scanned_gradient(convolution.conv2d)
  assert len(ours) >= 4 and all(_CANONICAL in line for line in ours), ours  # 2 forward, 2 x 2 backward (some DCE'd)
  # The control: autodiff's backward pass is not canonical there (if XLA starts rewriting it, this module can go).
  assert not all(_CANONICAL in line for line in _convolutions_of_scanned_gradient(_lax_conv))
