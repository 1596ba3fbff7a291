"""A prepared tfds dataset as process-local numpy batches; training never downloads, so offline runs fail fast."""

import importlib
import os
from typing import Callable

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pdm_jax.data import datasets
from pdm_jax.data import image_ops
from pdm_jax.data import sharding
from pdm_jax.data import subsets
from pdm_jax.data import types

LabelFn = Callable[[dict], tf.Tensor]


def resolve_data_dir(data_dir: str | None = None) -> str:
  """The tfds root to use: data_dir if given, else $TFDS_DATA_DIR, else tfds' default ~/tensorflow_datasets."""
  return data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(os.path.join('~', 'tensorflow_datasets'))


def prepare_command(spec: datasets.DatasetSpec, data_dir: str) -> str:
  """The shell command that prepares spec's dataset under data_dir on a machine with internet."""
  return f'python scripts/prepare_data.py --dataset={spec.name} --data_dir={data_dir}'


def open_builder(spec: datasets.DatasetSpec, data_dir: str, manual: bool = False) -> tfds.core.DatasetBuilder:
  """The tfds builder of spec under data_dir, never looking on GCS (so nothing is fetched over the network).

  With manual, spec.manual_builder if it has one: the same dataset, prepared from files in manual_dir.
  """
  if manual and spec.manual_builder:
    module, name = spec.manual_builder.rsplit('.', 1)
    return getattr(importlib.import_module(module), name)(data_dir=data_dir)
  if spec.builder_module:
    importlib.import_module(spec.builder_module)  # registers a builder that the tfds catalogue lacks
  return tfds.builder(spec.name, data_dir=data_dir, try_gcs=False)


def manual_hint(spec: datasets.DatasetSpec) -> str:
  """How to prepare spec's dataset without its download (files put in --manual_dir), or '' if it cannot be."""
  if not spec.manual_files:
    return ''
  them = 'them' if len(spec.manual_files) > 1 else 'it'
  return (f'put {", ".join(spec.manual_files)} in a folder and add --manual_dir=FOLDER; download {them} by hand '
          f'from {spec.manual_source}')


def read_split(builder: tfds.core.DatasetBuilder, split, spec: datasets.DatasetSpec, data_dir: str) -> tf.data.Dataset:
  """Examples of a split (name, expression or tfds.even_splits part) in file order, images still encoded."""
  try:
    return builder.as_dataset(
        split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()},
        # One file at a time: the n-th example read is the n-th of the split, which subsets rely on.
        read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
  except AssertionError:  # tfds' way of saying the files are not there
    manual = f' (or, without internet or where its download fails, {manual_hint(spec)})' if spec.manual_files else ''
    raise FileNotFoundError(
        f'{spec.name} is not prepared under data_dir={data_dir} and training never downloads: on a machine with '
        f'internet run `{prepare_command(spec, data_dir)}`{manual} and copy that folder here, or point '
        'data.data_dir / TFDS_DATA_DIR at a prepared copy.') from None


def split_size(builder: tfds.core.DatasetBuilder, split, examples: tf.data.Dataset) -> int:
  """Number of examples in split: from the dataset's metadata, else (mocked tfds) by counting `examples`."""
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError:  # metadata without split sizes, as under tfds.testing.mock_data
    count = int(examples.cardinality())
    if count < 0:
      count = int(examples.reduce(np.int64(0), lambda total, _: total + 1))
    return count


def label_fn(spec: datasets.DatasetSpec, attribute: str | None) -> LabelFn:
  """example -> int64 class: the label feature, or for an attribute 0 where it holds and 1 elsewhere."""
  if attribute:
    # Follows the reference, where Male gives label 0 and female label 1.
    return lambda example: 1 - tf.cast(example[spec.label_feature][attribute], tf.int64)
  return lambda example: tf.cast(example[spec.label_feature], tf.int64)


def _host_slice(builder, spec, split, data_dir, process_index, process_count,
                label) -> tuple[tf.data.Dataset, int, int]:
  """This host's even part of the whole split: (examples, their count, size of the split)."""
  whole = read_split(builder, split, spec, data_dir)
  num_examples = split_size(builder, split, whole)
  if process_count == 1:
    host, host_examples = whole, num_examples
  else:
    host_split = tfds.even_splits(split, n=process_count)[process_index]
    host = read_split(builder, host_split, spec, data_dir)
    host_examples = split_size(builder, host_split, host)
  return host.map(lambda example: _keep(example, label)), host_examples, num_examples


def _host_subset(builder, spec, split, data_dir, process_index, process_count, label, examples_per_class,
                 subset_seed) -> tuple[tf.data.Dataset, int, int]:
  """This host's part of a class-balanced subset, held in memory: (examples, their count, size of the subset)."""
  whole = read_split(builder, split, spec, data_dir)
  # Every host scans the labels once so all agree on the subset whatever the number of hosts.
  labels = np.concatenate([np.zeros(0, np.int64)] + list(whole.map(label).batch(8192).as_numpy_iterator()))
  chosen = subsets.balanced_subset(labels, spec.num_classes, examples_per_class, subset_seed, f'{spec.name} {split}')
  start, stop = sharding.host_bounds(len(chosen), process_index, process_count)
  mine = np.zeros(len(labels), bool)
  mine[chosen[start:stop]] = True
  mine = tf.constant(mine)

  def is_mine(index, unused_example):
    return mine[index]

  def keep(unused_index, example):
    return _keep(example, label)

  kept = whole.enumerate().filter(is_mine).map(keep)
  # The subset is small by design (20,000 faces, 50,000 tiny images): keeping it encoded in memory spares a
  # rescan of the whole split every epoch.
  parts = list(kept.batch(4096).as_numpy_iterator())
  held = {'image': np.concatenate([np.zeros(0, object)] + [part['image'] for part in parts]),
          'label': np.concatenate([np.zeros(0, np.int64)] + [part['label'] for part in parts])}
  return tf.data.Dataset.from_tensor_slices(held), stop - start, len(chosen)


def _keep(example: dict, label: LabelFn) -> dict:
  """Only what the model needs: the encoded image and an int64 label (-1 where the split has none)."""
  return {'image': example['image'], 'label': label(example)}


def check_prepared(data_config: ml_collections.ConfigDict) -> None:
  """FileNotFoundError (saying how to prepare it) unless the configured split is prepared; reads no examples."""
  spec = datasets.get_spec(data_config.name)
  data_dir = resolve_data_dir(data_config.get('data_dir', None))
  read_split(open_builder(spec, data_dir), data_config.get('split', None) or spec.reference_split, spec, data_dir)


def build(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int, start_step: int = 0,
          process_index: int = 0, process_count: int = 1, train: bool = True
          ) -> tuple[types.DatasetInfo, types.BatchIterator]:
  """A prepared tfds dataset -> (DatasetInfo, iterator of {'image': (B/n, H, W, C) float32, 'label': (B/n,) int32}).

  Training batches are endless, shuffled by (seed, epoch) and resume exactly at start_step; with train=False one
  ordered pass without flips (the last batch may be short). Each host reads its own slice of the split.
  """
  spec = datasets.get_spec(data_config.name)
  split = data_config.get('split', None) or spec.reference_split
  image_size = data_config.get('image_size', None) or spec.image_size
  num_channels = data_config.get('num_channels', None) or 3
  use_labels = bool(data_config.get('use_labels', False))
  local_batch_size = types.local_batch_size(global_batch_size, process_count)
  sharding.host_bounds(0, process_index, process_count)  # validates the host numbering before any reading
  has_labels = datasets.split_has_labels(spec, split)
  if use_labels and not has_labels:
    raise ValueError(f's-PDM needs labels: {spec.name} split {split!r} has none; use data.split='
                     f'{spec.reference_split!r} or data.use_labels=False (PDM).')
  resize_mode = image_ops.check_resize_mode(data_config.get('resize_mode', None) or spec.resize_mode)
  examples_per_class = data_config.get('examples_per_class', None)
  examples_per_class = spec.examples_per_class if examples_per_class is None else examples_per_class
  if examples_per_class and not has_labels:
    raise ValueError(f'data.examples_per_class={examples_per_class} needs labels, which {spec.name} split '
                     f'{split!r} lacks: set data.examples_per_class=0.')

  data_dir = resolve_data_dir(data_config.get('data_dir', None))
  builder = open_builder(spec, data_dir)
  attribute = None
  if spec.attribute:
    attribute = data_config.get('attribute', None) or spec.attribute
    valid = list(builder.info.features[spec.label_feature].keys())
    if attribute not in valid:
      raise ValueError(f'data.attribute={attribute!r} is not a {spec.name} attribute: use one of {", ".join(valid)}.')
  height, width = builder.info.features['image'].shape[:2]
  if (height, width) == (image_size, image_size):
    resize_mode = 'none'  # already the right size: keep the exact pixels
  elif resize_mode == 'none':
    raise ValueError(f'{spec.name} images are {height}x{width}, not data.image_size={image_size}: set '
                     "data.resize_mode='squash' or 'center_crop'.")

  label = label_fn(spec, attribute) if has_labels else (lambda example: tf.constant(-1, tf.int64))
  if examples_per_class:
    examples, host_examples, num_examples = _host_subset(
        builder, spec, split, data_dir, process_index, process_count, label, examples_per_class,
        int(data_config.get('subset_seed', 0)))
  else:
    examples, host_examples, num_examples = _host_slice(
        builder, spec, split, data_dir, process_index, process_count, label)

  def preprocess(example, flip_seed):
    batch = {'image': image_ops.preprocess(example['image'], image_size=image_size, num_channels=num_channels,
                                           resize_mode=resize_mode, flip_seed=flip_seed)}
    if use_labels:
      batch['label'] = tf.cast(example['label'], tf.int32)
    return batch

  stream = sharding.batched_stream(
      examples, host_examples, preprocess, local_batch_size=local_batch_size, seed=seed, start_step=start_step,
      train=train, shuffle_buffer=int(data_config.get('shuffle_buffer', 10_000)), process_index=process_index,
      random_flip=bool(data_config.get('random_flip', True)))
  info = types.DatasetInfo(name=spec.name, image_size=image_size, num_channels=num_channels,
                           num_classes=spec.num_classes if has_labels else None, num_examples=num_examples)
  return info, stream.as_numpy_iterator()
