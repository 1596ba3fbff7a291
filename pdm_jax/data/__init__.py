"""Input pipelines: one `build` call for every dataset name, returning (DatasetInfo, process-local batches), and
`describe`, the same DatasetInfo from the config alone."""

import ml_collections

from pdm_jax.data import types

DatasetInfo = types.DatasetInfo


def build(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int, start_step: int = 0,
          process_index: int = 0, process_count: int = 1, train: bool = True
          ) -> tuple[types.DatasetInfo, types.BatchIterator]:
  """Dispatches on data.name: 'digits' (embedded), 'image_folder', or a tfds dataset."""
  kwargs = dict(global_batch_size=global_batch_size, seed=seed, start_step=start_step,
                process_index=process_index, process_count=process_count, train=train)
  name = data_config.name
  # Imported lazily so the digits quickstart never pays for TensorFlow.
  if name == 'digits':
    from pdm_jax.data import digits
    return digits.build(data_config, **kwargs)
  if name == 'image_folder':
    from pdm_jax.data import image_folder
    return image_folder.build(data_config, **kwargs)
  from pdm_jax.data import tfds_pipeline
  return tfds_pipeline.build(data_config, **kwargs)


def order_depends_on_process_count(data_config: ml_collections.ConfigDict) -> bool:
  """Whether the examples of a training step depend on the number of processes: digits draw every global batch from
  one global order; the tfds and image-folder pipelines give each process a contiguous share of the examples."""
  return data_config.name != 'digits'


def describe(data_config: ml_collections.ConfigDict) -> types.DatasetInfo:
  """Image size, channels and classes of the configured data without reading it (num_examples is 0).

  For sampling and evaluating a trained model, whose checkpoint says the rest. An image folder is listed (its class
  sub-folders are the classes); digits and the tfds datasets are described from the config and the catalogue.
  """
  name = data_config.name
  channels = int(data_config.get('num_channels', None) or 3)
  if name == 'digits':
    from pdm_jax.data import digits
    return types.DatasetInfo(name=name, image_size=int(data_config.image_size), num_channels=1,
                             num_classes=digits.NUM_CLASSES if data_config.get('use_labels', True) else None,
                             num_examples=0)
  if name == 'image_folder':
    from pdm_jax.data import image_folder
    return types.DatasetInfo(name=name, image_size=int(data_config.image_size), num_channels=channels,
                             num_classes=image_folder.num_classes(data_config), num_examples=0)
  from pdm_jax.data import datasets
  spec = datasets.get_spec(name)
  split = data_config.get('split', None) or spec.reference_split
  return types.DatasetInfo(name=spec.name, image_size=int(data_config.get('image_size', None) or spec.image_size),
                           num_channels=channels,
                           num_classes=spec.num_classes if datasets.split_has_labels(spec, split) else None,
                           num_examples=0)


def check_available(data_config: ml_collections.ConfigDict) -> None:
  """A FileNotFoundError / ValueError saying how to provide the configured data if it cannot be read here; cheap
  (lists a folder or opens a tfds builder, reads no examples)."""
  name = data_config.name
  if name == 'digits':
    return  # shipped with scikit-learn
  if name == 'image_folder':
    from pdm_jax.data import image_folder
    image_folder.list_examples(data_config)  # also matches the images to data.attributes_file, if set
    return
  from pdm_jax.data import tfds_pipeline
  tfds_pipeline.check_prepared(data_config)
