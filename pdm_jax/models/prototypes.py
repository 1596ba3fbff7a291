"""PDM's prototype memory: the f_phi encoder, K learnable prototypes, their selection and losses."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.models import strided_conv

# Hidden widths of f_phi before its last conv (the reference: 64, 128, 256, then `prototype_dim`).
_ENCODER_WIDTHS = (64, 128, 256)


def encoder_depth(image_size: int) -> int:
  """Number of stride-2 convs f_phi applies: 4 as in the reference, fewer for images under 16 pixels."""
  if image_size < 4:
    raise ValueError(f'image_size={image_size} is too small for the prototype encoder: use at least 4.')
  return min(4, int(math.floor(math.log2(image_size))))


class FeatureEncoder(nn.Module):
  """f_phi: (B, H, W, C) clean images -> (B, feature_dim) float32 features (conv 4x4 s2 stack, global average pool)."""
  feature_dim: int
  dtype: Any = jnp.float32  # compute dtype; BatchNorm statistics and the pooled features stay float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    depth = encoder_depth(min(images.shape[1:3]))
    widths = _ENCODER_WIDTHS[:depth - 1] + (self.feature_dim,)
    x = images
    for i, width in enumerate(widths):
      normed = 0 < i < len(widths) - 1
      # torch's Conv2d(k=4, s=2, p=1). A bias before BatchNorm is cancelled by it (the reference keeps one): its
      # gradient is pure rounding noise.
      x = strided_conv.Conv4x4Stride2(width, use_bias=not normed, dtype=self.dtype, name=f'conv_{i}')(x)
      if i == len(widths) - 1:
        break
      if normed:
        # torch BatchNorm2d(momentum=0.1) keeps 0.9 of the old running statistics.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         name=f'bn_{i}')(x)
      x = nn.relu(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def kaiming_uniform(negative_slope: float = 0.1):
  """torch's kaiming_uniform_(a=negative_slope) for a (K, D) matrix, fan_in = D: the reference's prototype init."""
  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    gain = math.sqrt(2.0 / (1.0 + negative_slope**2))
    bound = gain * math.sqrt(3.0 / shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def timestep_sinusoid(timesteps: jax.Array, dim: int) -> jax.Array:
  """(B,) int or float timesteps -> (B, dim) interleaved sin/cos, the reference's table row t (sin at even columns)."""
  half = (dim + 1) // 2
  freqs = jnp.exp(jnp.arange(0, 2 * half, 2, dtype=jnp.float32) * -(math.log(10000.0) / dim))
  angles = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  interleaved = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(timesteps.shape[0], 2 * half)
  return interleaved[:, :dim]


def euclidean_distances(features: jax.Array, prototypes: jax.Array) -> jax.Array:
  """(B, D) x (K, D) -> (B, K) Euclidean distances, as torch.cdist; the floor keeps the sqrt's gradient finite."""
  squared = jnp.sum((features[:, None, :] - prototypes[None, :, :])**2, axis=-1)
  return jnp.sqrt(jnp.maximum(squared, 1e-12))


def compactness_loss(prototypes: jax.Array) -> jax.Array:
  """sum((cosine Gram - I)^2) over the (K, K) matrix of prototype cosine similarities."""
  unit = prototypes / jnp.maximum(jnp.linalg.norm(prototypes, axis=-1, keepdims=True), 1e-12)
  gram = unit @ unit.T
  return jnp.sum((gram - jnp.eye(prototypes.shape[0], dtype=gram.dtype))**2)


# How PDM picks each image's prototype at training: 'argmin' is the reference's nearest prototype (its self-label
# collapses onto one prototype); 'sinkhorn' is a balanced assignment (every prototype gets an equal share of a batch).
ASSIGNMENTS = ('argmin', 'sinkhorn')


def sinkhorn(scores: jax.Array, *, epsilon: float, num_iters: int, valid: jax.Array | None = None) -> jax.Array:
  """(N, K) scores -> (N, K) balanced soft assignment: each row sums to 1, each column to about N/K.

  Sinkhorn-Knopp on exp(scores / epsilon) as in SwAV (Caron et al. 2020): alternately give every prototype (column)
  1/K of the mass and every row 1/N, ending on the rows. Computed in log space, so small epsilon cannot overflow.
  Rows with valid False (empty queue slots) take no mass and come back as zeros.
  """
  num_rows, num_cols = scores.shape
  log_q = scores.astype(jnp.float32) / epsilon
  if valid is None:
    valid = jnp.ones((num_rows,), bool)
  log_q = jnp.where(valid[:, None], log_q, -jnp.inf)
  log_rows = jnp.log(jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32))
  for _ in range(num_iters):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - math.log(num_cols)
    row_norm = jax.nn.logsumexp(log_q, axis=1, keepdims=True)
    log_q = jnp.where(valid[:, None], log_q - row_norm - log_rows, -jnp.inf)
  return jnp.exp(log_q + log_rows)


def prototype_losses(features: jax.Array, prototypes: jax.Array, selected: jax.Array, *, tau: float,
                     alpha: float, beta: float, targets: jax.Array | None = None) -> dict[str, jax.Array]:
  """PDM / s-PDM prototype loss terms for (B, D) features and (B,) selected prototype indices.

  The cross-entropy of softmax(-tau * distance) is taken against `targets` ((B, K) probabilities, e.g. Sinkhorn's
  balanced codes), or against the selected prototypes when targets is None. The alignment pulls each feature to its
  selected prototype. PDM passes beta > 0; s-PDM passes selected = labels and beta = 0.
  """
  distances = euclidean_distances(features, prototypes)
  log_probs = jax.nn.log_softmax(-tau * distances, axis=-1)
  if targets is None:
    targets = jax.nn.one_hot(selected, prototypes.shape[0], dtype=log_probs.dtype)
  contrastive = -jnp.mean(jnp.sum(jax.lax.stop_gradient(targets) * log_probs, axis=-1))
  align = jnp.mean((features - prototypes[selected])**2)
  compact = compactness_loss(prototypes) if beta else jnp.zeros((), features.dtype)
  total = contrastive + alpha * align + beta * compact
  nearest = jnp.argmin(distances, axis=-1)
  return dict(prototype_loss=total, contrastive_loss=contrastive, align_loss=align, compact_loss=compact,
              nearest_prototype=nearest)


class PrototypeMemory(nn.Module):
  """K prototypes of size prototype_dim, the encoder f_phi that maps clean images near them, and (queue_size > 0) a
  queue of recent features that Sinkhorn balances over together with the batch."""
  num_prototypes: int
  prototype_dim: int
  dtype: Any = jnp.float32  # f_phi's compute dtype; prototypes, distances and losses stay float32
  queue_size: int = 0

  def setup(self):
    self.prototypes = self.param('prototypes', kaiming_uniform(0.1), (self.num_prototypes, self.prototype_dim))
    self.f_phi = FeatureEncoder(self.prototype_dim, dtype=self.dtype)
    if self.queue_size:
      # In 'batch_stats', flax's non-parameter state: the train step threads it through micro-batches, keeps it
      # replicated over devices and checkpoints it with f_phi's BatchNorm statistics.
      self.queue = self.variable('batch_stats', 'feature_queue', jnp.zeros, (self.queue_size, self.prototype_dim),
                                 jnp.float32)
      self.queue_filled = self.variable('batch_stats', 'feature_queue_filled', lambda: jnp.zeros((), jnp.int32))

  def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
    """(B, H, W, C) clean images -> (B, prototype_dim) features."""
    return self.f_phi(images, train=train)

  def __call__(self, indices: jax.Array) -> jax.Array:
    """(B,) prototype indices -> (B, prototype_dim) prototypes."""
    return self.prototypes[indices]

  def all_prototypes(self) -> jax.Array:
    """The (K, prototype_dim) prototype matrix."""
    return self.prototypes

  def balanced_codes(self, features: jax.Array, *, epsilon: float, num_iters: int, update_queue: bool) -> jax.Array:
    """(B, D) features -> (B, K) Sinkhorn codes on -distance, balanced over the batch and the queue's valid rows.

    update_queue (training) then pushes this batch's features to the front of the queue, dropping the oldest.
    """
    features = jax.lax.stop_gradient(features)
    bank = jax.lax.stop_gradient(self.prototypes)
    rows, valid = features, None
    if self.queue_size:
      rows = jnp.concatenate([features, self.queue.value], axis=0)
      valid = jnp.concatenate([jnp.ones((features.shape[0],), bool),
                               jnp.arange(self.queue_size) < self.queue_filled.value])
    codes = sinkhorn(-euclidean_distances(rows, bank), epsilon=epsilon, num_iters=num_iters, valid=valid)
    if self.queue_size and update_queue:
      self.queue.value = jnp.concatenate([features, self.queue.value], axis=0)[:self.queue_size]
      self.queue_filled.value = jnp.minimum(self.queue_filled.value + features.shape[0], self.queue_size)
    return codes[:features.shape[0]]
