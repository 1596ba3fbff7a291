"""Input pipelines: one `build` call for every dataset name, returning (DatasetInfo, process-local batches)."""

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
