"""The one attention function: every implementation against the plain formula (outputs and gradients, fp32, 1e-5),
the chunked path's blocks, the choice 'auto' makes, the chunked path's memory, and clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax.models import attention
from pdm_jax.models import unet as unet_lib


def plain_attention(query, key, value):
  """softmax(q k^T / sqrt(D)) v over (B, L, N, D) heads, written out: the yardstick."""
  logits = jnp.einsum('bqnd,bknd->bnqk', query, key) / math.sqrt(query.shape[-1])
  return jnp.einsum('bnqk,bknd->bqnd', jax.nn.softmax(logits, axis=-1), value)


def _qkv(batch=2, query_len=37, key_len=37, heads=4, head_dim=8, seed=0):
  rng = np.random.default_rng(seed)
  shape = lambda length: (batch, length, heads, head_dim)
  return tuple(jnp.asarray(rng.standard_normal(shape(n)), jnp.float32) for n in (query_len, key_len, key_len))


def _loss(fn):
  # A weighted sum, so the gradient reaches every output element with a different weight.
  weights = jnp.asarray(np.random.default_rng(9).standard_normal((2, 37, 4, 8)), jnp.float32)
  return lambda q, k, v: jnp.sum(fn(q, k, v)[:, :weights.shape[1]] * weights[:, :fn(q, k, v).shape[1]])


@pytest.mark.parametrize('impl,chunk_size', [('xla', None), ('chunked', None), ('chunked', 1), ('chunked', 5),
                                             ('chunked', 16), ('chunked', 37), ('chunked', 500), ('cpu_fused', None)])
def test_outputs_and_gradients_match_the_plain_formula(impl, chunk_size):
  q, k, v = _qkv()
  ours = lambda q, k, v: attention.dot_product_attention(q, k, v, impl=impl, chunk_size=chunk_size)
  np.testing.assert_allclose(ours(q, k, v), plain_attention(q, k, v), rtol=1e-5, atol=1e-5)
  grads = jax.grad(_loss(ours), argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(_loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', ['auto', 'xla', 'chunked', 'cpu_fused'])
def test_cross_attention_to_one_token(impl):
  q, k, v = _qkv(query_len=16, key_len=1)
  ours = attention.dot_product_attention(q, k, v, impl=impl, chunk_size=3)
  # One key: the softmax weight is 1, so every query returns the value.
  np.testing.assert_allclose(ours, jnp.broadcast_to(v, q.shape), rtol=1e-6, atol=1e-6)
  # ... and queries and keys get no gradient at all (exact zeros, not rounding noise that Adam would amplify).
  grads = jax.grad(_loss(lambda *t: attention.dot_product_attention(*t, impl=impl, chunk_size=3)),
                   argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(_loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
  assert not np.asarray(grads[0]).any() and not np.asarray(grads[1]).any()
  np.testing.assert_allclose(grads[2], expected[2], rtol=1e-5, atol=1e-5)


def test_multi_head_attention_splits_heads_of_the_projected_width():
  q, k, v = _qkv(heads=4, head_dim=8)
  flat = lambda t: t.reshape(*t.shape[:2], 32)
  out = attention.multi_head_attention(flat(q), flat(k), flat(v), num_heads=4, impl='chunked', chunk_size=8)
  np.testing.assert_allclose(out, flat(plain_attention(q, k, v)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])  # the written-out backward (CPU), autodiff + checkpoint (else)
@pytest.mark.parametrize('images,chunk_size', [(1, 5), (2, 37), (1, 37), (2, 8)])
def test_blocks_of_images_and_query_chunks_match_the_plain_formula(images, chunk_size, backend):
  q, k, v = _qkv(batch=4)
  ours = lambda q, k, v: attention._chunked_attention(q, k, v, images, chunk_size)  # pylint: disable=protected-access
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * jnp.cos(jnp.arange(q.size).reshape(q.shape)))
  with attention.resolve_auto_as(backend):
    np.testing.assert_allclose(ours(q, k, v), plain_attention(q, k, v), rtol=1e-5, atol=1e-5)
    grads = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads, jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_written_out_backward_is_autodiff_s(dtype):
  """The CPU path's hand-written backward against autodiff of the same blocks, also in bfloat16."""
  q, k, v = (t.astype(dtype) for t in _qkv(batch=2))
  grads = {}
  for backend in ('cpu', 'gpu'):
    with attention.resolve_auto_as(backend):
      fn = lambda q, k, v: jnp.sum(attention._chunked_attention(q, k, v, 1, 7).astype(jnp.float32)**2)  # pylint: disable=protected-access
      grads[backend] = jax.grad(fn, argnums=(0, 1, 2))(q, k, v)
  tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
  for got, want in zip(grads['cpu'], grads['gpu']):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                               atol=tolerance)


def test_auto_takes_the_fused_kernel_on_a_cpu_and_full_attention_when_small_elsewhere():
  on_cpu = jax.default_backend() == 'cpu'
  # The test suite runs on one CPU device, where the kernel builds (g++ is on every machine that runs it).
  assert attention.resolve_impl('auto', (8, 256, 32, 8), 256, jnp.float32) == ('cpu_fused' if on_cpu else 'xla')
  # CelebA's 88x88 attention (7,744 tokens, 32 heads) at batch 32: 245 GB of logits.
  assert attention.resolve_impl('auto', (32, 7744, 32, 8), 7744, jnp.bfloat16) == (
      'cudnn' if jax.default_backend() == 'gpu' else 'cpu_fused')
  assert attention.resolve_impl('xla', (32, 7744, 32, 8), 7744, jnp.float32) == 'xla'
  assert attention.block_budget_bytes() == (attention.CPU_BLOCK_BYTES if on_cpu else attention.LOGITS_BUDGET_BYTES)


@pytest.mark.parametrize('batch,query_len,heads,budget,expected', [
    (8, 256, 32, 8 * 2**20, (1, 256)),  # the reference's 16x16 attention: one image is one 8 MiB block
    (8, 256, 8, 8 * 2**20, (4, 256)),  # 2 MiB per image: four images a block
    (6, 16, 2, 4 * 2048, (3, 16)),  # four would fit, but blocks must divide the batch
    (2, 100, 1, 4 * 100 * 10, (1, 10)),  # one image is too big: query chunks of one image
    (1, 100, 1, 1, (1, 1)),  # never below one query
])
def test_default_blocks_fit_the_budget(batch, query_len, heads, budget, expected):
  images, chunk = attention.default_blocks(batch, query_len, query_len, heads, budget)
  assert (images, chunk) == expected
  assert batch % images == 0
  assert attention.logits_bytes(images, chunk, query_len, heads) <= max(budget, attention.logits_bytes(1, 1,
                                                                                                         query_len,
                                                                                                         heads))


def _attention_grad_temp_bytes(impl, chunk_size=None):
  q, k, v = (jax.ShapeDtypeStruct((1, 4096, 2, 8), jnp.float32),) * 3
  fn = lambda q, k, v: jnp.sum(attention.dot_product_attention(q, k, v, impl=impl, chunk_size=chunk_size)**2)
  compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(q, k, v).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_with_tokens_times_chunk_not_tokens_squared():
  full_matrix = attention.logits_bytes(1, 4096, 4096, 2)  # 128 MiB of logits
  xla_bytes = _attention_grad_temp_bytes('xla')
  small, large = (_attention_grad_temp_bytes('chunked', chunk_size=size) for size in (32, 256))
  print(f'forward+backward temp: xla {xla_bytes / 2**20:.1f} MiB, chunked by 32 {small / 2**20:.1f} MiB, '
        f'by 256 {large / 2**20:.1f} MiB')
  assert xla_bytes >= full_matrix
  assert large < full_matrix / 2  # a 256-query chunk holds 1/16 of the matrix (with its gradient, a few copies)
  assert small < large / 4


def test_unknown_impl_bad_chunk_and_cudnn_off_gpu_are_one_line_errors():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match='attention_impl=.flash. is unknown: use one of auto, xla, cudnn, cpu_fused, '
                                      'chunked'):
    attention.dot_product_attention(q, k, v, impl='flash')
  with pytest.raises(ValueError, match='attention_chunk_size=0 must be positive'):
    attention.dot_product_attention(q, k, v, impl='chunked', chunk_size=0)
  if jax.default_backend() != 'gpu':
    with pytest.raises(ValueError, match='needs a CUDA GPU and model.dtype=bfloat16.*use auto, xla or chunked'):
      attention.dot_product_attention(q, k, v, impl='cudnn')


def test_unet_is_the_same_function_under_every_cpu_attention_impl():
  config = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=('DownBlock2D', 'AttnDownBlock2D'), up_block_types=('AttnUpBlock2D', 'UpBlock2D'),
                norm_num_groups=8, bottleneck_attention=True)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  context = jnp.asarray(rng.standard_normal((2, 1, 12)), jnp.float32)
  t = jnp.array([3, 700])
  params = unet_lib.UNet2D(**config).init(jax.random.PRNGKey(0), x, t, context=context)
  outputs = {}
  for impl, chunk in (('xla', None), ('chunked', 3), ('cpu_fused', None), ('auto', None)):
    model = unet_lib.UNet2D(**config, attention_impl=impl, attention_chunk_size=chunk)
    loss = lambda p: jnp.sum(model.apply(p, x, t, context=context)**2)
    outputs[impl] = (model.apply(params, x, t, context=context), jax.grad(loss)(params))
  for impl in ('chunked', 'cpu_fused', 'auto'):
    np.testing.assert_allclose(outputs[impl][0], outputs['xla'][0], rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(outputs[impl][1]), jax.tree.leaves(outputs['xla'][1])):
      # atol grows with the leaf's scale (float32 sums over the batch and positions, in each path's order: 1.7e-5
      # apart in a leaf of magnitude ~12 on an Intel Xeon); leaves that are zero but for rounding keep 1e-5.
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_resolve_auto_as_a_gpu_for_memory_proxies():
  with attention.resolve_auto_as('gpu'):
    assert attention.resolve_impl('auto', (8, 256, 32, 8), 256, jnp.float32) == 'xla'
    assert attention.block_budget_bytes() == attention.LOGITS_BUDGET_BYTES
    # cuDNN needs a real GPU: a CPU compile standing in for one takes the chunked path.
    assert attention.resolve_impl('auto', (32, 7744, 32, 8), 7744, jnp.bfloat16) == (
        'cudnn' if jax.default_backend() == 'gpu' else 'chunked')
  assert attention.resolve_impl('auto', (8, 256, 32, 8), 256, jnp.float32) == (
      'cpu_fused' if jax.default_backend() == 'cpu' else 'xla')
