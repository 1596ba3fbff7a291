"""Helper process for test_training: N train steps on a mesh of the first `devices` devices; saves params."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from pdm_jax import data
from pdm_jax.training import loop
from pdm_jax.training import sharding
from pdm_jax.training import train_step as train_step_lib
from tests.tiny_configs import tiny_config


def main(model_type: str, num_devices: int, num_steps: int, out_path: str) -> None:
  config = tiny_config(model_type, batch_size=16)
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  info, batches = data.build(config.data, global_batch_size=16, seed=config.seed)
  import tempfile  # pylint: disable=g-import-not-at-top
  experiment = loop.build_experiment(config, tempfile.mkdtemp(), info, mesh)
  state = loop.initial_state(experiment)
  step = train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, config,
                                        experiment.learning_rate_fn, mesh)
  for _ in range(num_steps):
    state, _ = step(state, sharding.global_batch(next(batches), mesh))
  flat = {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path({'params': state.params,
                                                                  'batch_stats': state.batch_stats})}
  # The trained network's output on a fixed input: what the parameters are for.
  probe = jax.random.normal(jax.random.PRNGKey(7), (8, 8, 8, 1))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  output, _ = experiment.model.apply(variables, probe, jnp.arange(8) * 6, prototype_ids=jnp.arange(8) % 10)
  flat['output'] = np.asarray(output)
  np.savez(out_path, **flat)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
