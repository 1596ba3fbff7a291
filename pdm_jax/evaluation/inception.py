"""The FID Inception network (pytorch-fid's port of TensorFlow's 2015 InceptionV3) in flax.linen, and a batched runner.

It differs from torchvision's InceptionV3 where the 2015 graph did: BatchNorm eps 1e-3, average pools in the Mixed
blocks that exclude padding from the mean, a max pool in the last block's pool branch, and 1008 classes. Submodules
carry the torchvision / pytorch-fid state-dict names (`Mixed_5b/branch1x1/conv`, `.../bn`, `fc`), so
inception_weights.py maps the `.pth` file onto the parameter tree key by key.
"""

from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008
BATCH_NORM_EPS = 1e-3


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) matrix of torch's bilinear interpolation with align_corners=False and no antialiasing."""
  # Source coordinates rounded as torch's CPU kernel rounds them for float32 images (float32 scale, one fused
  # multiply-add), so the weights match to the last bit; half-pixel centres, negatives clamped to 0.
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  centres = np.arange(out_size, dtype=np.float64) + 0.5
  source = np.maximum((scale * centres - 0.5).astype(np.float32), np.float32(0.0))
  lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  upper_weight = (source - lower.astype(np.float32)).astype(np.float64)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.arange(out_size), lower), 1.0 - upper_weight)
  np.add.at(matrix, (np.arange(out_size), upper), upper_weight)
  return matrix.astype(np.float32)


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 (N, H, W, C) in 0..255 or float in [0, 1] -> float32 (N, H, W, 3) in [0, 1]; one channel is repeated."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'Inception expects images (N, H, W, 1 or 3), got shape {images.shape}: add batch/channel axes.')
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  elif not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'Inception expects uint8 or float images, got {images.dtype}: cast to uint8 (0..255).')
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    # Grey images as RGB, as pytorch-fid's PIL convert('RGB') does.
    images = jnp.repeat(images, 3, axis=-1)
  return images


def resize_to_input(images: jax.Array) -> jax.Array:
  """Images (N, H, W, C) uint8 or [0, 1] -> float32 (N, 299, 299, 3) in [0, 1], bilinear as pytorch-fid resizes."""
  images = to_unit_range(images)
  height, width = images.shape[1:3]
  if (height, width) == (INPUT_SIZE, INPUT_SIZE):
    return images  # torch's interpolate to the same size is the identity
  rows = jnp.asarray(bilinear_resize_matrix(height, INPUT_SIZE))
  columns = jnp.asarray(bilinear_resize_matrix(width, INPUT_SIZE))
  return jnp.einsum('ih,nhwc,jw->nijc', rows, images, columns, precision=jax.lax.Precision.HIGHEST)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU on NHWC activations."""
  features: int
  kernel_size: Sequence[int]
  strides: int = 1
  padding: Sequence[int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, tuple(self.kernel_size), strides=self.strides,
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_excluding_padding(x: jax.Array) -> jax.Array:
  """3x3 stride-1 mean over in-image pixels only (TensorFlow's SAME average pool)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """3x3 stride-2 max pool without padding, (N, H, W, C) -> (N, (H-3)//2+1, (W-3)//2+1, C)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class FIDInceptionA(nn.Module):
  """Mixed_5b..5d: 1x1, 5x5, double 3x3 and avg-pool branches at 35x35."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(64, (1, 1), name='branch1x1')(x)
    branch5x5 = BasicConv2d(48, (1, 1), name='branch5x5_1')(x)
    branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name='branch5x5_2')(branch5x5)
    branch3x3dbl = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: the 35x35 -> 17x17 reduction (strided 3x3, double 3x3 and max-pool branches)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(384, (3, 3), strides=2, name='branch3x3')(x)
    branch3x3dbl = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), strides=2, name='branch3x3dbl_3')(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches at 17x17, avg pool excluding padding."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, (1, 1), name='branch1x1')(x)
    branch7x7 = BasicConv2d(c7, (1, 1), name='branch7x7_1')(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(branch7x7)
    branch7x7dbl = BasicConv2d(c7, (1, 1), name='branch7x7dbl_1')(x)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(branch7x7dbl)
    branch7x7dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(branch7x7dbl)
    branch_pool = BasicConv2d(192, (1, 1), name='branch_pool')(_avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: the 17x17 -> 8x8 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(192, (1, 1), name='branch3x3_1')(x)
    branch3x3 = BasicConv2d(320, (3, 3), strides=2, name='branch3x3_2')(branch3x3)
    branch7x7x3 = BasicConv2d(192, (1, 1), name='branch7x7x3_1')(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (3, 3), strides=2, name='branch7x7x3_4')(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (avg pool excluding padding) and Mixed_7c (max pool: a quirk of the 2015 graph kept for parity)."""
  pool: str  # 'avg' or 'max'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(320, (1, 1), name='branch1x1')(x)
    branch3x3 = BasicConv2d(384, (1, 1), name='branch3x3_1')(x)
    branch3x3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(branch3x3)], axis=-1)
    branch3x3dbl = BasicConv2d(448, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(branch3x3dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(branch3x3dbl)], axis=-1)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3_excluding_padding(x)
    else:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    branch_pool = BasicConv2d(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
  """Images (N, H, W, 1|3) uint8 or [0, 1] float -> {'pool': (N, 2048), 'logits': (N, 1008), 'logits_unbiased'}.

  'logits_unbiased' is fc without its bias: torch-fidelity computes the Inception Score on it.
  """

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = resize_to_input(images) * 2.0 - 1.0
    x = BasicConv2d(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride_2(x)
    x = BasicConv2d(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride_2(x)
    x = FIDInceptionA(32, name='Mixed_5b')(x)
    x = FIDInceptionA(64, name='Mixed_5c')(x)
    x = FIDInceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, channels_7x7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = FIDInceptionC(channels_7x7, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE('avg', name='Mixed_7b')(x)
    x = FIDInceptionE('max', name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_LOGITS, name='fc')
    logits = fc(pool)
    unbiased = jnp.dot(pool, fc.variables['params']['kernel'])
    return {'pool': pool, 'logits': logits, 'logits_unbiased': unbiased}


def variable_shapes() -> dict:
  """Shapes of the network's variables {'params': ..., 'batch_stats': ...} as ShapeDtypeStructs, without compute."""
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), dummy)


def init_random_variables(seed: int = 0) -> dict:
  """Random He-scaled variables with positive BN scales/variances (tests and throughput only: FID needs real weights).

  Drawn with numpy from variable_shapes(): flax's init would run the whole network once at 299x299 (~30 s on a CPU).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':  # (kh, kw, in, out) or (in, out): fan-in is everything but the last axis
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)  # BN bias / mean, fc bias

  return jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(draw(path, leaf)), variable_shapes())


class InceptionFeatureExtractor:
  """Runs the network over many images in fixed-size batches (one compilation) and returns numpy arrays."""

  def __init__(self, variables: dict, batch_size: int = 50):
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {batch_size}.')
    self.variables = variables
    self.batch_size = batch_size
    model = FIDInceptionV3()
    # Resizing is compiled per input shape (cheap); the network only ever sees (batch, 299, 299, 3) floats.
    self._resize = jax.jit(resize_to_input)
    self._network = jax.jit(model.apply)

  def __call__(self, images: np.ndarray | Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Images (N, H, W, C) uint8 / [0, 1] float, or an iterable of such batches -> {'pool': (N, 2048), ...}."""
    batches = [images] if isinstance(images, (np.ndarray, jax.Array)) else images
    outputs = {}
    for batch in batches:
      batch = np.asarray(batch)
      if batch.ndim != 4:
        raise ValueError(f'images must be (N, H, W, C), got shape {batch.shape}: add the batch axis.')
      if np.issubdtype(batch.dtype, np.floating) and batch.size and (batch.min() < 0 or batch.max() > 1):
        raise ValueError(f'float images must be in [0, 1], got [{batch.min():.3g}, {batch.max():.3g}]: '
                         'map model outputs with (x + 1) / 2 first.')
      for start in range(0, batch.shape[0], self.batch_size):
        for key, value in self._run_chunk(batch[start:start + self.batch_size]).items():
          outputs.setdefault(key, []).append(value)
    if not outputs:
      raise ValueError('no images given: pass at least one image.')
    return {key: np.concatenate(values) for key, values in outputs.items()}

  def _run_chunk(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
    """Runs up to batch_size images, padding the batch so the network keeps one compiled shape."""
    count = chunk.shape[0]
    resized = self._resize(jnp.asarray(chunk))
    if count < self.batch_size:
      resized = jnp.pad(resized, ((0, self.batch_size - count), (0, 0), (0, 0), (0, 0)))
    result = self._network(self.variables, resized)
    return {key: np.asarray(value[:count]) for key, value in result.items()}
