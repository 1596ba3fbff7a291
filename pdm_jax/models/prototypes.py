"""PDM's prototype memory: the f_phi encoder, K learnable prototypes, their selection and losses."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
      # Explicit padding 1 matches torch's Conv2d(k=4, s=2, p=1): 'SAME' would pad asymmetrically. A bias
      # before BatchNorm is cancelled by it (the reference keeps one): its gradient is pure rounding noise.
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=not normed,
                  dtype=self.dtype, name=f'conv_{i}')(x)
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


def prototype_losses(features: jax.Array, prototypes: jax.Array, targets: jax.Array, *, tau: float,
                     alpha: float, beta: float) -> dict[str, jax.Array]:
  """PDM / s-PDM prototype loss terms for (B, D) features and (B,) target prototype indices.

  PDM passes targets = argmin distance and beta > 0; s-PDM passes the labels and beta = 0.
  """
  distances = euclidean_distances(features, prototypes)
  log_probs = jax.nn.log_softmax(-tau * distances, axis=-1)
  contrastive = -jnp.mean(jnp.take_along_axis(log_probs, targets[:, None], axis=-1))
  align = jnp.mean((features - prototypes[targets])**2)
  compact = compactness_loss(prototypes) if beta else jnp.zeros((), features.dtype)
  total = contrastive + alpha * align + beta * compact
  nearest = jnp.argmin(distances, axis=-1)
  return dict(prototype_loss=total, contrastive_loss=contrastive, align_loss=align, compact_loss=compact,
              nearest_prototype=nearest)


class PrototypeMemory(nn.Module):
  """K prototypes of size prototype_dim and the encoder f_phi that maps clean images near them."""
  num_prototypes: int
  prototype_dim: int
  dtype: Any = jnp.float32  # f_phi's compute dtype; prototypes, distances and losses stay float32

  def setup(self):
    self.prototypes = self.param('prototypes', kaiming_uniform(0.1), (self.num_prototypes, self.prototype_dim))
    self.f_phi = FeatureEncoder(self.prototype_dim, dtype=self.dtype)

  def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
    """(B, H, W, C) clean images -> (B, prototype_dim) features."""
    return self.f_phi(images, train=train)

  def __call__(self, indices: jax.Array) -> jax.Array:
    """(B,) prototype indices -> (B, prototype_dim) prototypes."""
    return self.prototypes[indices]

  def all_prototypes(self) -> jax.Array:
    """The (K, prototype_dim) prototype matrix."""
    return self.prototypes
