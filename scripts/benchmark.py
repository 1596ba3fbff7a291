"""Train-step throughput of a config's model on synthetic data; prints one JSON line.

Default: the reference CIFAR-10 PDM (UNet 128,256,256,256 x 2, attention at level 2, K=15, prototype_dim 256,
32x32) at batch 8:  python scripts/benchmark.py --batch=8
Any config:          python scripts/benchmark.py --config=configs/digits_spdm.py --batch=128
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pdm_jax import data  # pylint: disable=g-import-not-at-top
from pdm_jax.training import loop
from pdm_jax.training import sharding
from pdm_jax.training import state as state_lib
from pdm_jax.training import train_step as train_step_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                               'cifar10_pdm.py')
config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config whose model and diffusion are measured.')
flags.DEFINE_integer('batch', 8, 'Global batch size.')
flags.DEFINE_integer('steps', 20, 'Timed steps after warm-up (the median is reported; at least 10).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.steps < 10:
    raise app.UsageError('--steps must be at least 10.')
  config = FLAGS.config
  size, channels = config.data.image_size, config.data.num_channels
  num_classes = 10 if config.model.type in ('spdm', 'cddpm') else None
  info = data.DatasetInfo(name='synthetic', image_size=size, num_channels=channels, num_classes=num_classes,
                          num_examples=FLAGS.batch)
  mesh = sharding.data_mesh()
  experiment = loop.build_experiment(config, tempfile.mkdtemp(), info, mesh)
  state = loop.initial_state(experiment)
  step_fn = train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, config,
                                           experiment.learning_rate_fn, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (FLAGS.batch, size, size, channels)).astype(np.float32)}
  if num_classes:
    batch['label'] = rng.integers(0, num_classes, FLAGS.batch).astype(np.int32)
  batch = sharding.global_batch(batch, mesh)

  start = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  for _ in range(FLAGS.warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  durations = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    durations.append(time.perf_counter() - start)
  seconds = statistics.median(durations)
  params = jax.device_get(state.params)
  print(json.dumps(dict(
      model_type=config.model.type, image_size=size, batch=FLAGS.batch, devices=mesh.size,
      backend=jax.default_backend(), seconds_per_step=round(seconds, 5),
      images_per_second=round(FLAGS.batch / seconds, 2), compile_seconds=round(compile_seconds, 2),
      parameters=state_lib.count_parameters(params),
      unet_parameters=state_lib.count_parameters(params['unet']),
      prototype_parameters=state_lib.count_parameters(params.get('memory', {})))))


if __name__ == '__main__':
  app.run(main)
