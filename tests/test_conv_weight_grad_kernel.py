"""The C++ kernel gradient of the stride-1 convolution (kernels/conv_weight_grad_cpu.cc): against a float64 NumPy
sum (fp32, 1e-5 of the largest entry) over channel counts that fill and do not fill its register tiles, kernel
sizes and paddings, images smaller than the kernel and several threads; that conv2d's gradient uses it where it
applies (and matches XLA's route there) and keeps XLA's route elsewhere; and that it runs under vmap and lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.kernels import conv_route
from pdm_jax.kernels import conv_weight_grad_cpu
from pdm_jax.models import convolution

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='a CPU kernel')


def _reference(x, dy, kernel_size, top, left):
  """dw[i, j, c, o] = sum over b, h, w of x[b, h + i - top, w + j - left, c] dy[b, h, w, o], in float64."""
  kh, kw = kernel_size
  batch, height, width, _ = x.shape
  _, out_height, out_width, _ = dy.shape
  padded = np.zeros((batch, out_height + kh - 1, out_width + kw - 1, x.shape[-1]))
  # x's rows [0, H) sit at padded rows [top, top + H); rows of x beyond the output's reach are cut.
  rows = slice(max(0, -top), min(height, out_height + kh - 1 - top))
  cols = slice(max(0, -left), min(width, out_width + kw - 1 - left))
  padded[:, rows.start + top:rows.stop + top, cols.start + left:cols.stop + left] = x[:, rows, cols]
  dw = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      window = padded[:, i:i + out_height, j:j + out_width].reshape(-1, x.shape[-1])
      dw[i, j] = window.T @ dy.reshape(-1, dy.shape[-1]).astype(np.float64)
  return dw


@pytest.mark.parametrize('batch,height,width,channels,out_channels,kernel_size,padding', [
    (2, 8, 8, 24, 32, (3, 3), ((1, 1), (1, 1))),  # whole register tiles (12 x 32 on AVX-512)
    (3, 7, 5, 13, 48, (3, 3), ((1, 1), (1, 1))),  # a 1-channel remainder tile and a 16-channel last tile
    (1, 6, 9, 3, 16, (3, 2), ((2, 0), (1, 3))),  # the UNet's first convolution's 3 channels; asymmetric padding
    (2, 5, 4, 10, 64, (1, 1), ((0, 0), (0, 0))),  # a 1x1 convolution
    (1, 2, 2, 5, 16, (3, 3), ((1, 1), (1, 1))),  # an image smaller than the kernel
    (3, 33, 17, 7, 32, (3, 3), ((0, 2), (1, 1))),  # more lines than work items, blocks of several lines
])
def test_kernel_matches_the_float64_sum(batch, height, width, channels, out_channels, kernel_size, padding):
  rng = np.random.default_rng(channels)
  (top, bottom), (left, right) = padding
  out_height = height + top + bottom - kernel_size[0] + 1
  out_width = width + left + right - kernel_size[1] + 1
  x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
  dy = rng.standard_normal((batch, out_height, out_width, out_channels)).astype(np.float32)
  got = jax.jit(conv_weight_grad_cpu.weight_grad, static_argnums=(2, 3, 4))(x, dy, kernel_size, top, left)
  want = _reference(x, dy, kernel_size, top, left)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _grads(x, kernel, padding, weights):
  loss = lambda x, k: jnp.sum(convolution.conv2d(x, k, padding) * weights)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)


def _conv_inputs(channels, out_channels, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, channels)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, channels, out_channels)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((2, 6, 6, out_channels)), jnp.float32)
  return x, kernel, weights


def test_conv2d_gradient_uses_the_kernel_and_agrees_with_xla_s_route(monkeypatch):
  x, kernel, weights = _conv_inputs(20, 32)
  padding = ((1, 1), (1, 1))
  lowered = jax.jit(jax.grad(lambda k: jnp.sum(convolution.conv2d(x, k, padding) * weights))).lower(kernel)
  assert 'pdm_conv_weight_grad' in lowered.as_text()
  ours = _grads(x, kernel, padding, weights)
  with conv_route.xla_route():  # what benchmark.py's FLOP counts and --memory compile
    lowered = jax.jit(jax.grad(lambda k: jnp.sum(convolution.conv2d(x, k, padding) * weights))).lower(kernel)
  assert 'pdm_conv_weight_grad' not in lowered.as_text()
  monkeypatch.setenv('PDM_JAX_CPU_CONV_KERNEL', '0')
  lowered = jax.jit(jax.grad(lambda k: jnp.sum(convolution.conv2d(x, k, padding) * weights))).lower(kernel)
  assert 'pdm_conv_weight_grad' not in lowered.as_text()
  xla = _grads(x, kernel, padding, weights)
  for got, want in zip(ours, xla):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize('out_channels,dtype', [(24, jnp.float32), (32, jnp.bfloat16)])
def test_shapes_and_dtypes_it_does_not_take_keep_xla_s_route(out_channels, dtype):
  x, kernel, weights = _conv_inputs(8, out_channels)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  assert not conv_weight_grad_cpu.usable(x, weights.astype(dtype))
  lowered = jax.jit(jax.grad(lambda k: jnp.sum(convolution.conv2d(x, k, ((1, 1), (1, 1))) * weights))).lower(kernel)
  assert 'pdm_conv_weight_grad' not in lowered.as_text()


def test_runs_under_vmap_and_inside_a_scan():
  x, kernel, weights = _conv_inputs(12, 16)
  padding = ((1, 1), (1, 1))
  single = _grads(x, kernel, padding, weights)[1]
  loss = lambda k, x, w: jnp.sum(convolution.conv2d(x, k, padding) * w)
  per_half = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(kernel, x.reshape(2, 1, 6, 6, 12),
                                                            weights.reshape(2, 1, 6, 6, 16))
  np.testing.assert_allclose(per_half.sum(0), single, rtol=1e-5, atol=1e-5 * float(jnp.abs(single).max()))
  step = lambda total, micro: (total + jax.grad(loss)(kernel, *micro), None)
  scanned = jax.jit(lambda: jax.lax.scan(step, jnp.zeros_like(kernel), (x.reshape(2, 1, 6, 6, 12),
                                                                         weights.reshape(2, 1, 6, 6, 16)))[0])()
  np.testing.assert_allclose(scanned, single, rtol=1e-5, atol=1e-5 * float(jnp.abs(single).max()))


def test_repeats_bit_for_bit():
  # Threads split the sum; a split that followed their timing would change the last bits from run to run (and a
  # resumed training run would drift from an uninterrupted one).
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((8, 16, 16, 24)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((8, 16, 16, 32)), jnp.float32)
  grad = jax.jit(conv_weight_grad_cpu.weight_grad, static_argnums=(2, 3, 4))
  first = np.asarray(grad(x, dy, (3, 3), 1, 1))
  for _ in range(5):
    np.testing.assert_array_equal(np.asarray(grad(x, dy, (3, 3), 1, 1)), first)
