"""The C++ Winograd F(4x4, 3x3) convolution (kernels/winograd_cpu.cc): against float64 NumPy sums, for the forward
convolution, the input gradient (`transposed`) and the kernel gradient, over image sizes that are and are not multiples of the
4x4 tile, channel counts that fill and do not fill its register tiles and panels, and batches small enough that
kernel panels are split among threads; that conv2d uses it exactly where it applies; that a UNet's loss and
gradients match XLA's convolutions' (the test suite's other models are too small for the kernel); that it repeats
bit for bit and runs under vmap and lax.scan.

Tolerance: 5e-5 of the largest output entry. Winograd's transforms round differently from a direct convolution:
measured 0.5-1.3e-5 of the largest output for 32-384 random input channels, 9-24x a direct float32 convolution's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.kernels import conv_route
from pdm_jax.kernels import winograd_cpu
from pdm_jax.models import convolution

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='a CPU kernel')

_SAME = ((1, 1), (1, 1))


def _reference(x, kernel):
  """y[b, h, w, o] = sum over i, j, c of x[b, h + i - 1, w + j - 1, c] kernel[i, j, c, o], in float64."""
  batch, height, width, _ = x.shape
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((batch, height, width, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      y += padded[:, i:i + height, j:j + width] @ kernel[i, j].astype(np.float64)
  return y


def _assert_close(got, want):
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * np.abs(want).max())


@pytest.mark.parametrize('batch,height,width,channels,out_channels', [
    (2, 8, 8, 16, 32),     # one 16-channel chunk, one panel, 8 tiles: one partial register tile
    (3, 9, 13, 48, 96),    # sizes that are not multiples of 4: tiles cut at the edges; 3 panels
    (1, 32, 32, 32, 64),   # 64 tiles: several register tiles per block
    (16, 16, 16, 128, 128),  # 256 tiles: several blocks
    (1, 8, 20, 256, 32),   # few tiles, wide channels: kernel panels split among threads
])
def test_forward_matches_the_float64_convolution(batch, height, width, channels, out_channels):
  rng = np.random.default_rng(channels + height)
  x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, channels, out_channels)) / np.sqrt(9 * channels)).astype(np.float32)
  _assert_close(np.asarray(jax.jit(winograd_cpu.conv)(x, kernel)), _reference(x, kernel))


@pytest.mark.parametrize('batch,height,width,channels,out_channels', [
    (2, 8, 8, 32, 16), (3, 11, 10, 64, 96), (4, 16, 16, 128, 256)])
def test_transposed_is_the_input_gradient(batch, height, width, channels, out_channels):
  # dx of y = conv(x, kernel) for kernel (3, 3, C, O) is dy against the flipped kernel with C and O swapped.
  rng = np.random.default_rng(channels)
  kernel = (rng.standard_normal((3, 3, channels, out_channels)) / np.sqrt(9 * out_channels)).astype(np.float32)
  dy = rng.standard_normal((batch, height, width, out_channels)).astype(np.float32)
  got = jax.jit(lambda dy, k: winograd_cpu.conv(dy, k, transposed=True))(dy, kernel)
  _assert_close(np.asarray(got), _reference(dy, np.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)))


def _reference_weight_grad(x, dy):
  """dw[i, j, c, o] = sum over b, h, w of x[b, h + i - 1, w + j - 1, c] dy[b, h, w, o], in float64."""
  batch, height, width, channels = x.shape
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy = dy.reshape(-1, dy.shape[-1]).astype(np.float64)
  return np.stack([np.stack([padded[:, i:i + height, j:j + width].reshape(-1, channels).T @ dy for j in range(3)])
                   for i in range(3)])


@pytest.mark.parametrize('batch,height,width,channels,out_channels', [
    (2, 8, 8, 16, 32),      # 8 tiles: one round, mostly zero padding of the depth
    (3, 9, 13, 48, 96),     # tiles cut at the edges; 48 channels: a partial group of 12
    (20, 16, 16, 32, 64),   # 320 tiles: two rounds, the second partial
])
def test_weight_grad_matches_the_float64_sum(batch, height, width, channels, out_channels):
  rng = np.random.default_rng(channels * 7 + height)
  x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
  dy = rng.standard_normal((batch, height, width, out_channels)).astype(np.float32)
  _assert_close(np.asarray(jax.jit(winograd_cpu.weight_grad)(x, dy)), _reference_weight_grad(x, dy))


def _lowered(fn, *args):
  return jax.jit(fn).lower(*args).as_text()


def test_conv2d_uses_it_forward_and_backward_and_agrees_with_xla():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 12, 32)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 32, 64)) / 17, jnp.float32)
  weights = jnp.asarray(rng.standard_normal((2, 8, 12, 64)), jnp.float32)
  loss = lambda x, k: jnp.sum(jnp.sin(convolution.conv2d(x, k, _SAME)) * weights)  # keeps the forward live
  text = _lowered(jax.grad(loss, argnums=(0, 1)), x, kernel)
  assert text.count('pdm_winograd_conv') == 2  # the forward convolution and the input gradient
  assert text.count('pdm_winograd_weight_grad') == 1 and 'pdm_conv_weight_grad' not in text
  ours = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  with conv_route.xla_route():  # what benchmark.py's FLOP counts and --memory compile
    assert 'pdm_winograd_conv' not in _lowered(jax.grad(loss, argnums=(0, 1)), x, kernel)
    xla = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  for got, want in zip(ours, xla):
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize('shape,kernel_shape,padding,dtype', [
    ((2, 8, 8, 32), (3, 3, 32, 48), _SAME, jnp.float32),    # output channels not a multiple of 32
    ((2, 8, 8, 24), (3, 3, 24, 32), _SAME, jnp.float32),    # input channels not a multiple of 16
    ((2, 4, 4, 32), (3, 3, 32, 32), _SAME, jnp.float32),    # an image under 8 x 8
    ((2, 8, 8, 32), (3, 3, 32, 32), ((0, 0), (0, 0)), jnp.float32),  # not 'same' padding
    ((2, 8, 8, 32), (1, 1, 32, 32), ((0, 0), (0, 0)), jnp.float32),  # a 1x1 kernel
    ((2, 8, 8, 32), (3, 3, 32, 32), _SAME, jnp.bfloat16),
])
def test_convolutions_it_does_not_take_keep_xla(shape, kernel_shape, padding, dtype):
  x, kernel = jnp.ones(shape, dtype), jnp.ones(kernel_shape, dtype)
  assert 'pdm_winograd_conv' not in _lowered(lambda x, k: convolution.conv2d(x, k, padding), x, kernel)


def test_environment_switch_keeps_xla(monkeypatch):
  x, kernel = jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32))
  assert 'pdm_winograd_conv' in _lowered(lambda x, k: convolution.conv2d(x, k, _SAME), x, kernel)
  monkeypatch.setenv('PDM_JAX_CPU_CONV_KERNEL', '0')  # a new function: jit's trace cache would keep the old route
  assert 'pdm_winograd_conv' not in _lowered(lambda x, k: convolution.conv2d(x, k, _SAME), x, kernel)


def test_repeats_bit_for_bit():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((8, 16, 16, 64)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 64, 64)), jnp.float32)
  conv = jax.jit(winograd_cpu.conv)
  grad = jax.jit(winograd_cpu.weight_grad)  # rounds and frequencies summed in a fixed order, not the threads'
  first, first_grad = np.asarray(conv(x, kernel)), np.asarray(grad(x, x))
  for _ in range(5):
    np.testing.assert_array_equal(np.asarray(conv(x, kernel)), first)
    np.testing.assert_array_equal(np.asarray(grad(x, x)), first_grad)


def test_runs_under_vmap_and_inside_a_scan():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 1, 8, 8, 16)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) / 12, jnp.float32)
  want = _reference(np.asarray(x).reshape(2, 8, 8, 16), np.asarray(kernel))
  mapped = jax.jit(jax.vmap(lambda x: convolution.conv2d(x, kernel, _SAME)))(x)
  _assert_close(np.asarray(mapped).reshape(want.shape), want)
  scanned = jax.jit(lambda x: jax.lax.scan(lambda c, x: (c, convolution.conv2d(x, kernel, _SAME)), 0, x)[1])(x)
  _assert_close(np.asarray(scanned).reshape(want.shape), want)


def test_a_unet_s_loss_and_gradients_agree_with_xla_s_convolutions(monkeypatch):
  # The model-level wiring: a UNet whose 3x3 convolutions qualify (16x16 and 8x8 maps, 32 and 64 channels), its
  # eps-MSE loss and every parameter's gradient with the kernels and with XLA's convolutions.
  from pdm_jax.models import unet as unet_lib
  model = unet_lib.UNet2D(block_out_channels=(32, 64), layers_per_block=1, down_block_types=('DownBlock2D',
                          'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D'), attention_head_dim=8,
                          norm_num_groups=8)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
  t = jnp.array([10, 600])
  params = model.init(jax.random.PRNGKey(0), x, t)
  loss = lambda p: jnp.mean((model.apply(p, x, t) - noise) ** 2)
  assert 'pdm_winograd_conv' in jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
  ours = jax.jit(jax.value_and_grad(loss))(params)
  monkeypatch.setenv('PDM_JAX_CPU_CONV_KERNEL', '0')
  loss_xla = lambda p: jnp.mean((model.apply(p, x, t) - noise) ** 2)  # a new function: a fresh trace
  assert 'pdm_winograd_conv' not in jax.jit(jax.value_and_grad(loss_xla)).lower(params).as_text()
  xla = jax.jit(jax.value_and_grad(loss_xla))(params)
  np.testing.assert_allclose(ours[0], xla[0], rtol=1e-5)
  # Per parameter, 1e-4 of its largest gradient; biases feeding a GroupNorm have gradients that are rounding noise
  # (~1e-10), so also 1e-6 of the largest gradient of all.
  largest = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(xla[1]))
  for got, want in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(xla[1])):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(jnp.abs(want).max()) + 1e-6 * largest)
