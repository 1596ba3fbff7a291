"""The one way back from a workdir to a trained model: the checkpoint's own description of its data, the experiment
built for it, and the latest state. Sampling and evaluation both start here; neither reads the training data."""

import ml_collections

from pdm_jax import data
from pdm_jax.models import kinds
from pdm_jax.training import checkpoints
from pdm_jax.training import loop
from pdm_jax.training import state as state_lib


def dataset_info(config: ml_collections.ConfigDict, checkpointer: checkpoints.Checkpointer) -> data.DatasetInfo:
  """Image shape and classes as the checkpoints record them; from the config alone (data.describe) otherwise."""
  signature = checkpointer.read_signature()
  if signature is None or 'image_shape' not in signature:
    return data.describe(config.data)
  height, _, channels = signature['image_shape']
  num_classes = signature.get('num_prototypes') if kinds.get(config.model.type).class_conditional else None
  return data.DatasetInfo(name=config.data.name, image_size=int(height), num_channels=int(channels),
                          num_classes=num_classes, num_examples=0)


def restore_latest(config: ml_collections.ConfigDict, workdir: str, mesh=None
                   ) -> tuple[loop.Experiment, state_lib.TrainState]:
  """(experiment, state of the latest checkpoint in workdir); FileNotFoundError naming the fix if there is none."""
  checkpoints.check_has_checkpoint(workdir)  # before the Checkpointer, which would create the folder
  checkpointer = checkpoints.Checkpointer(workdir, config.train.checkpoint_every, config.train.keep_checkpoints)
  try:  # one Checkpointer serves both: the data description it records, then the experiment's state
    experiment = loop.build_experiment(config, workdir, dataset_info(config, checkpointer), mesh, checkpointer)
    return experiment, loop.initial_state(experiment)
  except BaseException:
    checkpointer.close()
    raise
