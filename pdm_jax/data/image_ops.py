"""TensorFlow image preprocessing shared by every pipeline: decode, resize, flip, scale to [-1, 1]."""


import tensorflow as tf

try:
  # The input pipeline runs on the CPU; GPUs belong to JAX.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF was already initialised elsewhere; the first caller decided.
  pass

RESIZE_MODES = ('none', 'squash', 'center_crop')


def check_resize_mode(mode: str) -> str:
  """Returns mode if it is one of RESIZE_MODES, else raises a ValueError naming them."""
  if mode not in RESIZE_MODES:
    raise ValueError(f'data.resize_mode={mode!r} is unknown: use one of {", ".join(RESIZE_MODES)}.')
  return mode


def decode(encoded: tf.Tensor, num_channels: int) -> tf.Tensor:
  """Encoded PNG / JPEG / BMP / GIF bytes () -> uint8 (H, W, num_channels); grey and colour are converted."""
  return tf.io.decode_image(encoded, channels=num_channels, expand_animations=False)


def resize(image: tf.Tensor, image_size: int, mode: str) -> tf.Tensor:
  """uint8 (H, W, C) -> uint8 (image_size, image_size, C): 'squash' ignores aspect, 'center_crop' keeps it."""
  if mode == 'center_crop':
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
  elif mode != 'squash':
    raise ValueError(f'resize needs mode squash or center_crop, got {mode!r}.')
  # Antialiased bilinear then rounding to uint8 follows PIL's Resize, which the reference used.
  resized = tf.image.resize(image, (image_size, image_size), method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def to_model_range(image: tf.Tensor) -> tf.Tensor:
  """uint8 (H, W, C) in [0, 255] -> float32 (H, W, C) in [-1, 1]."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def preprocess(encoded: tf.Tensor, *, image_size: int, num_channels: int, resize_mode: str,
               flip_seed: tf.Tensor | None = None) -> tf.Tensor:
  """Encoded image () -> float32 (image_size, image_size, num_channels) in [-1, 1], flipped by flip_seed (2,)."""
  image = decode(encoded, num_channels)
  if resize_mode != 'none':
    image = resize(image, image_size, resize_mode)
  # Fails at run time if an image slipped past the size checks made when the pipeline was built.
  image = tf.ensure_shape(image, (image_size, image_size, num_channels))
  if flip_seed is not None:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return to_model_range(image)
