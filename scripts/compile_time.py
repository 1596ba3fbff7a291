"""Compile time of a config's train step, cold or warm from the persistent compilation cache: one JSON line.

Run it twice with one cache folder: the first run compiles (cold) and fills the cache, the second loads (warm).
  python scripts/compile_time.py --config=configs/digits_spdm.py --cache_dir=/tmp/pdm_xla_cache   # cold
  python scripts/compile_time.py --config=configs/digits_spdm.py --cache_dir=/tmp/pdm_xla_cache   # warm
Without --cache_dir the run's default cache is used ($PDM_JAX_COMPILATION_CACHE, see pdm_jax/compilation_cache.py).
"""

import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from pdm_jax import compilation_cache
from pdm_jax import data
from pdm_jax.training import loop
from pdm_jax.training import sharding
from pdm_jax.training import train_step

config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('cache_dir', None, 'Compilation cache folder (default: the run\'s default).')
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.cache_dir:
    os.environ[compilation_cache.CACHE_ENV] = FLAGS.cache_dir
  cache = compilation_cache.setup()
  entries_before = len(os.listdir(cache)) if cache and os.path.isdir(cache) else 0
  config = FLAGS.config
  mesh = sharding.data_mesh()
  info, batches = data.build(config.data, global_batch_size=config.train.batch_size, seed=config.seed)
  with tempfile.TemporaryDirectory() as workdir:
    experiment = loop.build_experiment(config, workdir, info, mesh)
    state = loop.initial_state(experiment)
    step_fn = train_step.make_train_step(experiment.model, experiment.tx, experiment.schedule, config,
                                         experiment.learning_rate_fn, mesh)
    batch = sharding.global_batch(next(batches), mesh)
    start = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    traced = time.perf_counter()
    lowered.compile()
    compiled = time.perf_counter()
    experiment.checkpointer.close()
  print(json.dumps(dict(config=config.model.type, cache=cache, cache_entries_before=entries_before,
                        trace_and_lower_s=round(traced - start, 2), compile_s=round(compiled - traced, 2))))


if __name__ == '__main__':
  app.run(main)
