"""The order of examples over hosts and steps: per-host slices, seeded epochs, and resuming at any step.

A host's examples are a fixed, finite tf.data stream. Training repeats it epoch after epoch, each epoch shuffled
by (seed, epoch), and flips each image with a seed drawn from (seed, host, position in the endless stream), so
the batch at step k is a pure function of (seed, k) and a run resumed at step k skips straight to it.
"""

from typing import Callable

import tensorflow as tf

from pdm_jax.data import image_ops  # pylint: disable=unused-import  (keeps TensorFlow off the GPUs)

# An example is a dict of tensors; the preprocessor turns it and an optional flip seed (2,) into model inputs.
Preprocessor = Callable[[dict, tf.Tensor | None], dict]

_ENDLESS_EPOCHS = 2**62


def host_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of host process_index's contiguous share of num_examples; shares differ by at most one."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must lie in [0, process_count={process_count}).')
  return (num_examples * process_index // process_count, num_examples * (process_index + 1) // process_count)


def resume_position(start_step: int, local_batch_size: int, examples_per_epoch: int) -> tuple[int, int]:
  """(epoch, offset in that epoch) of the first example read at start_step when epochs repeat back to back."""
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  if examples_per_epoch < 1:
    raise ValueError('this host has no examples: use fewer hosts or a larger split.')
  return divmod(start_step * local_batch_size, examples_per_epoch)


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """A scalar int64 shuffle seed that differs per epoch, drawn statelessly from (seed, epoch)."""
  key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.stateless_uniform((), key, minval=0, maxval=2**62, dtype=tf.int64)


def batched_stream(examples: tf.data.Dataset, examples_per_epoch: int, preprocess: Preprocessor, *,
                   local_batch_size: int, seed: int, start_step: int, train: bool, shuffle_buffer: int,
                   process_index: int, random_flip: bool) -> tf.data.Dataset:
  """Host examples -> batches of local_batch_size: endless and shuffled for training, one ordered pass otherwise.

  Args:
    examples: this host's examples, finite and in a fixed order, still encoded (decoding happens after the skip).
    examples_per_epoch: how many elements `examples` holds.
    preprocess: (example, flip seed (2,) or None) -> dict of model inputs for one example.
    local_batch_size: rows per yielded batch.
    seed: drives shuffling and flips.
    start_step: the first step to yield; earlier steps are skipped without decoding any image.
    train: endless, shuffled, flipped and batched with drop_remainder; else one pass, last batch may be short.
    shuffle_buffer: tf.data shuffle buffer, capped at examples_per_epoch.
    process_index: folded into flip seeds so hosts do not flip in lockstep.
    random_flip: whether training flips images left-right with probability 1/2.
  Returns:
    A tf.data.Dataset of dicts of batched tensors.
  """
  if not train:
    stream = examples.skip(start_step * local_batch_size)
    stream = stream.map(lambda example: preprocess(example, None), num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(stream.batch(local_batch_size, drop_remainder=False))

  first_epoch, offset = resume_position(start_step, local_batch_size, examples_per_epoch)
  buffer_size = max(1, min(shuffle_buffer, examples_per_epoch))

  def one_epoch(epoch):
    shuffled = examples.shuffle(buffer_size, seed=_epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    # Position of each example in the endless stream: the key of its flip, independent of the shuffle.
    positions = tf.data.Dataset.range(examples_per_epoch).map(lambda i: epoch * examples_per_epoch + i)
    return tf.data.Dataset.zip((shuffled, positions))

  stream = tf.data.Dataset.range(first_epoch, _ENDLESS_EPOCHS).flat_map(one_epoch).skip(offset)
  flip_key = tf.constant([seed, process_index], tf.int64)

  def prepare(example, position):
    flip_seed = tf.random.experimental.stateless_fold_in(flip_key, position) if random_flip else None
    return preprocess(example, flip_seed)

  stream = stream.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return _finish(stream.batch(local_batch_size, drop_remainder=True))


def _finish(stream: tf.data.Dataset) -> tf.data.Dataset:
  """Prefetches and pins the options that keep the order deterministic."""
  options = tf.data.Options()
  options.deterministic = True
  # One thread per op avoids oversubscribing the few host cores that also feed the accelerator.
  options.threading.max_intra_op_parallelism = 1
  return stream.prefetch(tf.data.AUTOTUNE).with_options(options)
