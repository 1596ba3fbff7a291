"""The one attention function of every attention layer (UNet self-attention, mid block, PDM bottleneck).

Implementations (`model.attention_impl`):
- 'xla': plain XLA ops (the function of `jax.nn.dot_product_attention`'s 'xla' path, in fewer passes); builds the
  whole (B, heads, Lq, Lk) logits matrix.
- 'cudnn': cuDNN flash attention through `jax.nn.dot_product_attention`; CUDA GPUs with bfloat16 / float16 only.
- 'cpu_fused': a C++ kernel on XLA:CPU (pdm_jax/kernels/attention_cpu.cc, built on first use): each (image, head)
  pair a task on XLA's thread pool, the weights never in memory, the backward recomputing them. CPU only.
- 'chunked': blocks of images x query chunks whose backward pass recomputes each block's weights (on a CPU a
  written-out backward, elsewhere autodiff under `jax.checkpoint`), so forward and backward hold one
  (images, heads, chunk, Lk) block at a time: memory grows with tokens x chunk, not tokens^2. Any backend, any dtype.
- 'auto': on a CPU 'cpu_fused' if it builds and the program has one device (XLA cannot split the kernel's batch
  across devices; it would gather the batch), else 'chunked' with cache-sized blocks (CPU_BLOCK_BYTES); elsewhere
  'xla' while the full logits fit LOGITS_BUDGET_BYTES, else 'cudnn' where it can run, else 'chunked'.
Softmax is always computed in float32, whatever the compute dtype.
"""

import contextlib

from absl import logging
import jax
import jax.numpy as jnp

from pdm_jax.kernels import attention_cpu

ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'cpu_fused', 'chunked')
# Float32 logits one attention block may hold at a time: 'auto' keeps full-matrix XLA attention below it, and
# 'chunked' sizes its query chunks to it. 512 MiB keeps the reference's 16x16 attention (batch 32) in one piece.
LOGITS_BUDGET_BYTES = 512 * 2**20
# On a CPU, blocks whose logits stay in cache beat one pass over the whole matrix even with the recomputation: at the
# reference's 16x16 attention (32 heads of 8, batch 32), forward + backward ran 4.6x faster in 8 MiB blocks than
# full-matrix; with 2 to 64 MiB blocks the batch-8 train step was the same to within 4%.
CPU_BLOCK_BYTES = 8 * 2**20
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def check_attention_impl(impl: str, chunk_size: int | None = None) -> None:
  """Raises a one-line ValueError for an unknown model.attention_impl or a non-positive chunk size."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'model.attention_impl={impl!r} is unknown: use one of {", ".join(ATTENTION_IMPLS)}.')
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f'model.attention_chunk_size={chunk_size} must be positive (or None for automatic).')


def logits_bytes(batch: int, query_len: int, key_len: int, num_heads: int) -> int:
  """Bytes of the float32 (B, heads, Lq, Lk) logits that full-matrix attention materialises."""
  return 4 * batch * num_heads * query_len * key_len


_auto_backend: str | None = None  # set by resolve_auto_as: the backend whose choices 'auto' makes


@contextlib.contextmanager
def resolve_auto_as(backend: str):
  """While tracing inside it, 'auto' chooses as on `backend` (e.g. 'gpu' for a CPU compile standing in for a GPU
  one in scripts/benchmark.py --memory); 'cudnn' still needs a real GPU and falls back to 'chunked'."""
  global _auto_backend
  previous, _auto_backend = _auto_backend, backend
  try:
    yield
  finally:
    _auto_backend = previous


def _backend() -> str:
  return _auto_backend or jax.default_backend()


def resolve_impl(impl: str, query_shape: tuple[int, ...], key_len: int, dtype) -> str:
  """The implementation `impl` stands for on this backend, for (B, Lq, heads, head_dim) queries of `dtype`."""
  check_attention_impl(impl)
  if impl != 'auto':
    return impl
  if _backend() == 'cpu':
    return 'cpu_fused' if _cpu_kernel_usable() else 'chunked'
  batch, query_len, num_heads, _ = query_shape
  if logits_bytes(batch, query_len, key_len, num_heads) <= LOGITS_BUDGET_BYTES:
    return 'xla'
  if jax.default_backend() == 'gpu' and jnp.dtype(dtype) in map(jnp.dtype, _CUDNN_DTYPES):
    return 'cudnn'
  return 'chunked'


_warned_unavailable = []


def _cpu_kernel_usable() -> bool:
  """Whether 'auto' takes the fused CPU kernel: it builds here and the computation has one device."""
  if jax.device_count() != 1:
    return False
  reason = attention_cpu.unavailable_reason()
  if reason is not None and not _warned_unavailable:
    _warned_unavailable.append(reason)
    logging.warning('Fused CPU attention unavailable (%s); using the chunked XLA path.', reason)
  return reason is None


def block_budget_bytes() -> int:
  """Float32 logits one 'chunked' block holds: cache-sized on a CPU, LOGITS_BUDGET_BYTES elsewhere."""
  return CPU_BLOCK_BYTES if _backend() == 'cpu' else LOGITS_BUDGET_BYTES


def default_blocks(batch: int, query_len: int, key_len: int, num_heads: int,
                   budget: int = LOGITS_BUDGET_BYTES) -> tuple[int, int]:
  """(images, query tokens) per block so that a block's float32 logits stay within budget (at least (1, 1)): whole
  images while one fits (as many as divide the batch), else query chunks of one image."""
  per_image = logits_bytes(1, query_len, key_len, num_heads)
  if per_image <= budget:
    images = min(batch, budget // per_image)
    while batch % images:
      images -= 1
    return images, query_len
  return 1, max(1, min(query_len, budget // logits_bytes(1, 1, key_len, num_heads)))


def _softmax_numerator(query: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """exp(logits - row max) in float32 and the row max, for (..., Lq, D) pre-scaled queries and (..., Lk, D) keys."""
  logits = jnp.einsum('...qd,...kd->...qk', query, key, preferred_element_type=jnp.float32)
  # A constant to autodiff: the softmax does not depend on it.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  return jnp.exp(logits - row_max), row_max


def _sum_over_queries(rows: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_q rows[..., q, :] weights[..., q, k] -> (..., Lk, D), computed as (..., D, Lk) and then swapped.

  XLA:CPU runs the direct form with the (Lq, Lk) matrix as a transposed left operand: ~16 GFLOP/s on the
  reference's (32 heads, 256, 256) blocks, against ~180 for this one. The barrier stops XLA folding the swap back
  into the product.
  """
  product = jnp.einsum('...qd,...qk->...dk', rows, weights, preferred_element_type=jnp.float32)
  return jnp.swapaxes(jax.lax.optimization_barrier(product), -1, -2)


def _block_forward(query, key, value):
  """One heads-first block: (..., Lq, D) pre-scaled queries, (..., Lk, D) x2 -> the (..., Lq, D) output and the
  float32 (..., Lq, 1) log row sums; float32 softmax, divided by the row sums after the product with the values."""
  weights, row_max = _softmax_numerator(query, key)
  row_sums = jnp.sum(weights, axis=-1, keepdims=True)
  out = jnp.einsum('...qk,...kd->...qd', weights.astype(value.dtype), value, preferred_element_type=jnp.float32)
  return (out / row_sums).astype(query.dtype), row_max + jnp.log(row_sums)


def _block_backward(query, key, value, out, log_row_sums, d_out):
  """Gradients of one block from its inputs, output and log row sums: the (Lq, Lk) weights are recomputed, and
  every product is ordered so that XLA:CPU runs it as a plain matrix product. float32 key / value gradients."""
  logits = jnp.einsum('...qd,...kd->...qk', query, key, preferred_element_type=jnp.float32)
  weights = jnp.exp(logits - log_row_sums)  # the softmax
  d_weights = jnp.einsum('...qd,...kd->...qk', d_out, value, preferred_element_type=jnp.float32)
  # softmax backward: d_logits = weights * (d_weights - sum_k weights d_weights), and that sum is d_out . out.
  d_logits = weights * (d_weights - jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True))
  d_logits = d_logits.astype(query.dtype)
  d_query = jnp.einsum('...qk,...kd->...qd', d_logits, key, preferred_element_type=jnp.float32)
  d_value = _sum_over_queries(d_out, weights.astype(d_out.dtype))
  return d_query.astype(query.dtype), _sum_over_queries(query, d_logits), d_value


@jax.custom_vjp
def _attention_over_chunks(queries: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """(chunks, ..., chunk, D) pre-scaled query chunks against (..., Lk, D) keys and values, one chunk at a time.

  The backward pass is written out (flash-attention style): it keeps the queries, keys, values, output and log row
  sums (all tokens x D: keys and values once, not once per chunk), and recomputes each chunk's weights.
  """
  return _over_chunks_forward(queries, key, value)[0]


def _over_chunks_forward(queries, key, value):
  out, log_row_sums = jax.lax.map(lambda chunk: _block_forward(chunk, key, value), queries)
  return out, (queries, key, value, out, log_row_sums)


def _over_chunks_backward(residuals, d_out):
  queries, key, value, out, log_row_sums = residuals

  def chunk_step(d_key_value, chunk):
    d_query, d_key, d_value = _block_backward(chunk[0], key, value, *chunk[1:])
    return (d_key_value[0] + d_key, d_key_value[1] + d_value), d_query

  zeros = jnp.zeros(key.shape, jnp.float32)
  (d_key, d_value), d_queries = jax.lax.scan(chunk_step, (zeros, zeros), (queries, out, log_row_sums, d_out))
  return d_queries, d_key.astype(key.dtype), d_value.astype(value.dtype)


_attention_over_chunks.defvjp(_over_chunks_forward, _over_chunks_backward)


def _checkpointed_over_chunks(queries: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """The function of _attention_over_chunks by autodiff, each chunk under jax.checkpoint: off a CPU, XLA's own
  backward, whose memory the README's table measures (the written-out one added 2.6 GiB per device to the CelebA
  step on 2 devices with remat, though not to attention alone)."""
  return jax.lax.map(jax.checkpoint(lambda chunk: _block_forward(chunk, key, value)[0]), queries)


def _full_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """Full-matrix attention on XLA: (B, Lq, N, D), (B, Lk, N, D) x2 -> (B, Lq, N, D); float32 softmax.

  The same function as jax.nn.dot_product_attention(implementation='xla'), written for fewer passes over the
  (B, N, Lq, Lk) matrix, which dominates attention's time: the scale is applied to the (smaller) queries, the
  max subtracted for stability is a constant to autodiff (the softmax does not depend on it), and the division by
  the row sums comes after the product with the values.
  """
  scale = jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
  logits = jnp.einsum('bqnd,bknd->bnqk', query * scale, key, preferred_element_type=jnp.float32)
  weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  row_sums = jnp.sum(weights, axis=-1)  # (B, N, Lq)
  out = jnp.einsum('bnqk,bknd->bqnd', weights.astype(value.dtype), value, preferred_element_type=jnp.float32)
  return (out / jnp.swapaxes(row_sums, 1, 2)[..., None]).astype(query.dtype)


def _chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array, images: int, chunk_size: int
                       ) -> jax.Array:
  """Attention one block of `images` x `chunk_size` queries at a time, heads first; the backward pass recomputes
  each block's weights rather than storing them. images must divide the batch."""
  batch, query_len, num_heads, head_dim = query.shape
  key_len = key.shape[1]
  num_chunks, num_groups = -(-query_len // chunk_size), batch // images
  # Padded queries attend like any other and are dropped: queries never interact, so results are unchanged.
  padded = jnp.pad(query * jnp.asarray(head_dim ** -0.5, query.dtype),
                   ((0, 0), (0, num_chunks * chunk_size - query_len), (0, 0), (0, 0)))
  # (groups, chunks, images, heads, chunk, D) query blocks; a group's chunks meet its images' keys and values.
  queries = padded.reshape(num_groups, images, num_chunks, chunk_size, num_heads, head_dim).transpose(0, 2, 1, 4, 3, 5)
  heads_first = lambda t: t.reshape(num_groups, images, key_len, num_heads, head_dim).transpose(0, 1, 3, 2, 4)

  attend = _attention_over_chunks if _backend() == 'cpu' else _checkpointed_over_chunks
  out = jax.lax.map(lambda group: attend(*group), (queries, heads_first(key), heads_first(value)))
  out = out.transpose(0, 2, 1, 4, 3, 5)
  return out.reshape(batch, num_chunks * chunk_size, num_heads, head_dim)[:, :query_len]


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, impl: str = 'auto',
                          chunk_size: int | None = None) -> jax.Array:
  """Scaled dot-product attention: (B, Lq, N, D), (B, Lk, N, D) x2 -> (B, Lq, N, D), N heads of size D.

  chunk_size: query tokens per chunk of the whole batch for 'chunked' (None: blocks sized to block_budget_bytes()).
  """
  check_attention_impl(impl, chunk_size)
  if key.shape[1] == 1:
    # A softmax over one key is 1: every query receives the value (PDM's bottleneck attends to one prototype
    # token). Exact, free, and the query / key projections get exactly zero gradient instead of rounding noise.
    return jnp.broadcast_to(value, query.shape[:2] + value.shape[2:]).astype(query.dtype)
  impl = resolve_impl(impl, query.shape, key.shape[1], query.dtype)
  if impl == 'xla':
    return _full_attention(query, key, value)
  if impl == 'cudnn':
    if jax.default_backend() != 'gpu' or jnp.dtype(query.dtype) not in map(jnp.dtype, _CUDNN_DTYPES):
      raise ValueError(f'model.attention_impl=cudnn needs a CUDA GPU and model.dtype=bfloat16 (here: '
                       f'{jax.default_backend()}, {jnp.dtype(query.dtype).name}): use auto, xla or chunked.')
    return jax.nn.dot_product_attention(query, key, value, implementation='cudnn')
  if impl == 'cpu_fused':
    if jax.default_backend() != 'cpu':
      raise ValueError(f'model.attention_impl=cpu_fused runs on a CPU only (here: {jax.default_backend()}): use '
                       'auto, xla, cudnn or chunked.')
    return attention_cpu.attention(query, key, value)
  batch, query_len, num_heads, _ = query.shape
  if chunk_size:  # the user's query chunk, over the whole batch
    return _chunked_attention(query, key, value, batch, min(chunk_size, query_len))
  images, chunk = default_blocks(batch, query_len, key.shape[1], num_heads, block_budget_bytes())
  return _chunked_attention(query, key, value, images, chunk)


def multi_head_attention(query: jax.Array, key: jax.Array, value: jax.Array, num_heads: int, *,
                         impl: str = 'auto', chunk_size: int | None = None) -> jax.Array:
  """Projected tokens (B, Lq, E), (B, Lk, E) x2 -> (B, Lq, E), split into num_heads heads of E // num_heads."""
  split = lambda t: t.reshape(*t.shape[:2], num_heads, t.shape[-1] // num_heads)
  out = dot_product_attention(split(query), split(key), split(value), impl=impl, chunk_size=chunk_size)
  return out.reshape(query.shape)

