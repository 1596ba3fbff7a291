"""The one attention function of every attention layer (UNet self-attention, mid block, PDM bottleneck).

Implementations (`model.attention_impl`):
- 'xla': plain XLA ops (the function of `jax.nn.dot_product_attention`'s 'xla' path, in fewer passes); builds the
  whole (B, heads, Lq, Lk) logits matrix.
- 'cudnn': cuDNN flash attention through `jax.nn.dot_product_attention`; CUDA GPUs with bfloat16 / float16 only.
- 'chunked': query chunks under `jax.checkpoint`, so forward and backward hold one (B, heads, chunk, Lk) block at a
  time: memory grows with tokens x chunk, not tokens^2. Any backend, any dtype.
- 'auto': 'xla' while the full logits fit a small budget (fastest), else 'cudnn' where it can run, else 'chunked'.
Softmax is always computed in float32, whatever the compute dtype.
"""

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'chunked')
# Float32 logits one attention block may hold at a time: 'auto' keeps full-matrix XLA attention below it, and
# 'chunked' sizes its query chunks to it. 512 MiB keeps the reference's 16x16 attention (batch 32) in one piece.
LOGITS_BUDGET_BYTES = 512 * 2**20
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


def resolve_impl(impl: str, query_shape: tuple[int, ...], key_len: int, dtype) -> str:
  """The implementation `impl` stands for on this backend, for (B, Lq, heads, head_dim) queries of `dtype`."""
  check_attention_impl(impl)
  if impl != 'auto':
    return impl
  batch, query_len, num_heads, _ = query_shape
  if logits_bytes(batch, query_len, key_len, num_heads) <= LOGITS_BUDGET_BYTES:
    return 'xla'
  if jax.default_backend() == 'gpu' and jnp.dtype(dtype) in map(jnp.dtype, _CUDNN_DTYPES):
    return 'cudnn'
  return 'chunked'


def default_chunk_size(batch: int, query_len: int, key_len: int, num_heads: int) -> int:
  """Query tokens per chunk so that one chunk's float32 logits stay within LOGITS_BUDGET_BYTES (at least 1)."""
  per_query = logits_bytes(batch, 1, key_len, num_heads)
  return max(1, min(query_len, LOGITS_BUDGET_BYTES // per_query))


def _full_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """Full-matrix attention on XLA: (B, Lq, N, D), (B, Lk, N, D) x2 -> (B, Lq, N, D); float32 softmax.

  The same function as jax.nn.dot_product_attention(implementation='xla'), written for fewer passes over the
  (B, N, Lq, Lk) matrix, which dominates attention's time: the scale is applied to the (smaller) queries, the
  max subtracted for stability is a constant to autodiff (the softmax does not depend on it), and the division by
  the row sums comes after the product with the values. On this CPU, forward + backward at the reference's 16x16
  attention (8 heads of 32) runs 3-8% faster than jax.nn's.
  """
  scale = jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
  logits = jnp.einsum('bqnd,bknd->bnqk', query * scale, key, preferred_element_type=jnp.float32)
  weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  row_sums = jnp.sum(weights, axis=-1)  # (B, N, Lq)
  out = jnp.einsum('bnqk,bknd->bqnd', weights.astype(value.dtype), value, preferred_element_type=jnp.float32)
  return (out / jnp.swapaxes(row_sums, 1, 2)[..., None]).astype(query.dtype)


def _chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array, chunk_size: int) -> jax.Array:
  """_full_attention one query chunk at a time; each chunk is recomputed in the backward pass, not stored."""
  batch, query_len, num_heads, head_dim = query.shape
  num_chunks = -(-query_len // chunk_size)
  # Padded queries attend like any other and are dropped: queries never interact, so results are unchanged.
  padded = jnp.pad(query, ((0, 0), (0, num_chunks * chunk_size - query_len), (0, 0), (0, 0)))
  chunks = padded.reshape(batch, num_chunks, chunk_size, num_heads, head_dim).swapaxes(0, 1)
  attend = jax.checkpoint(lambda chunk: _full_attention(chunk, key, value))
  out = jax.lax.map(attend, chunks)
  return out.swapaxes(0, 1).reshape(batch, num_chunks * chunk_size, num_heads, head_dim)[:, :query_len]


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, impl: str = 'auto',
                          chunk_size: int | None = None) -> jax.Array:
  """Scaled dot-product attention: (B, Lq, N, D), (B, Lk, N, D) x2 -> (B, Lq, N, D), N heads of size D.

  chunk_size: query tokens per chunk for 'chunked' (None: sized to LOGITS_BUDGET_BYTES).
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
  batch, query_len, num_heads, _ = query.shape
  chunk_size = chunk_size or default_chunk_size(batch, query_len, key.shape[1], num_heads)
  return _chunked_attention(query, key, value, min(chunk_size, query_len))


def multi_head_attention(query: jax.Array, key: jax.Array, value: jax.Array, num_heads: int, *,
                         impl: str = 'auto', chunk_size: int | None = None) -> jax.Array:
  """Projected tokens (B, Lq, E), (B, Lk, E) x2 -> (B, Lq, E), split into num_heads heads of E // num_heads."""
  split = lambda t: t.reshape(*t.shape[:2], num_heads, t.shape[-1] // num_heads)
  out = dot_product_attention(split(query), split(key), split(value), impl=impl, chunk_size=chunk_size)
  return out.reshape(query.shape)

