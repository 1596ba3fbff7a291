"""Train-step benchmarks of a config's model on synthetic data; one JSON line per batch size.

Throughput (default): the reference CIFAR-10 PDM (UNet 128,256,256,256 x 2, attention at level 2, K=15,
prototype_dim 256, 32x32) at batch 8, or any config:
  python scripts/benchmark.py --batch=8
  python scripts/benchmark.py --config=configs/digits_spdm.py --batch=128

--memory: lowers and compiles the jitted train step from abstract shapes only (nothing is allocated, so a 176x176
CelebA config at batch 64 needs no real memory) on a mesh of --devices devices, and prints XLA's per-device memory
analysis (arguments, outputs, aliased, temporaries, generated code, peak = arguments + outputs - aliased + temp) and
the FLOPs of one step. Batch default: the config's train.batch_size.
  python scripts/benchmark.py --memory --config=configs/celeba_pdm.py --batch=64 --devices=2 \
      --config.model.dtype=bfloat16 --config.model.remat=True
  Without a GPU these are XLA:CPU numbers (the CPU compiler's buffer assignment; --devices sets
  --xla_force_host_platform_device_count before jax loads): a proxy for a GPU compile, not a GPU measurement.
  XLA:CPU also computes bfloat16 convolutions and dots in float32, understating what bfloat16 saves on a GPU, and
  schedules for concurrency (--cpu_scheduler=memory: its memory-optimised schedule, ~25% less temp on CIFAR-10).
  The compile runs at LLVM optimisation level 0 (xla_backend_optimization_level): the same bytes, less compile time.

--compare-torch: the JAX train step (fp32) and the PyTorch original's (scripts/torch_reference.py: forward, backward,
clipping, AdamW) timed alternately in one process after a warm-up of both (each turn after one untimed step), plus
one sampling network evaluation each; medians, torch / JAX time ratios (> 1: JAX is faster) and GFLOP/s from XLA's
FLOP count of the network (the JAX programs compiled with XLA's routes in place of the C++ kernels):
  python scripts/benchmark.py --compare-torch --batch=8,32

Like main.py, the script restarts itself with transparent huge pages for glibc's large allocations where Linux
grants them (pdm_jax/huge_pages.py; PDM_JAX_HUGE_PAGES=0 to compare); torch, in the same process, gets them too.
"""

import os
import sys


def _argv_value(name: str) -> str | None:
  """The value of --name=V or --name V, read before absl parses flags (XLA flags must be set before jax loads)."""
  for i, arg in enumerate(sys.argv[1:], 1):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return None


_FORCED_DEVICES = _argv_value('devices')
if _FORCED_DEVICES and 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={_FORCED_DEVICES}').strip()

_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_SCRIPTS_DIR))
sys.path.insert(0, _SCRIPTS_DIR)
from pdm_jax import huge_pages  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # before jax or torch load: glibc reads its tunables only at start
if any(arg.startswith('--compare-torch') for arg in sys.argv[1:]):
  # torchvision / triton segfault when loaded after TensorFlow or jaxlib: the torch side is imported first.
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pass
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_flags

from pdm_jax import data
from pdm_jax import xla_options
from pdm_jax.kernels import conv_route
from pdm_jax.models import attention
from pdm_jax.models import kinds
from pdm_jax.training import loop
from pdm_jax.training import sharding
from pdm_jax.training import state as state_lib
from pdm_jax.training import train_step as train_step_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(_SCRIPTS_DIR), 'configs', 'cifar10_pdm.py')
config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config whose model and diffusion are measured.')
flags.DEFINE_multi_string('batch', None, 'Global batch size(s): repeat the flag or give a list (--batch=8,32). '
                          'Default 8; with --memory, the config\'s train.batch_size.')
flags.DEFINE_integer('steps', 20, 'Timed steps after warm-up (the median is reported; at least 10).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation (each side with --compare-torch).')
flags.DEFINE_bool('allow_few_steps', False, 'Accept --steps under 10 (tests only: such medians mean little).')
flags.DEFINE_bool('memory', False, 'Compile only, from abstract shapes; print XLA\'s per-device memory analysis.')
flags.DEFINE_bool('compare-torch', False, 'Time the JAX step against the PyTorch original\'s, alternately.')
flags.DEFINE_integer('devices', None, 'Devices in the mesh (default: all). On a CPU, forces this many host devices.')
flags.DEFINE_integer('torch_threads', None, '--compare-torch: torch.set_num_threads (default: the cores this process '
                     'may use). On a loaded machine torch\'s OpenMP threads wait on busy cores: 1 can be much faster.')
flags.DEFINE_enum('cpu_scheduler', 'default', ['default', 'memory'],
                  '--memory on a CPU: XLA:CPU\'s default (concurrency-optimised) instruction schedule, or its '
                  'memory-optimised one (closer to a GPU\'s memory-aware schedule; slower to compile).')
FLAGS = flags.FLAGS

# LLVM -O0 for --memory: buffer assignment happens before LLVM, so the bytes (and FLOPs) are the same and the
# compile takes ~35% less CPU time (measured on configs/cifar10_pdm.py at batch 64).
MEMORY_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}
MEMORY_SCHEDULER_OPTIONS = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
GIB = 2**30
CPU_NOTE = ('XLA:CPU memory analysis (no GPU here): a proxy for a GPU compile; GPU buffer assignment, fusion and '
            'scheduling differ.')
CPU_BF16_NOTE = (' XLA:CPU computes bfloat16 convolutions and dots in float32 (their outputs too), so the CPU '
                 'numbers understate what bfloat16 saves on a GPU.')


def _batch_sizes(default: int) -> list[int]:
  """--batch values (repeated and/or comma-separated) as ints, or [default]."""
  sizes = [int(part) for value in (FLAGS.batch or []) for part in value.split(',') if part.strip()]
  if any(size < 1 for size in sizes):
    raise app.UsageError(f'--batch must be positive, got {sizes}.')
  return sizes or [default]


def _mesh():
  """A 1-D data mesh over the first --devices devices (all by default)."""
  devices = jax.devices()
  if FLAGS.devices is not None:
    if not 1 <= FLAGS.devices <= len(devices):
      raise app.UsageError(f'--devices={FLAGS.devices} but {len(devices)} {jax.default_backend()} device(s) exist '
                           '(XLA_FLAGS already forces a host device count?).')
    devices = devices[:FLAGS.devices]
  return sharding.data_mesh(devices)


def _config_name() -> str:
  """'cifar10_pdm' for --config=configs/cifar10_pdm.py (':arg' kept, e.g. 'tiny_cli_config:pdm')."""
  path = config_flags.get_config_filename(FLAGS['config'])
  name = os.path.splitext(os.path.basename(path))[0]
  argument = FLAGS['config'].serialize().split(':', 1)  # '--config=path[:arg]'
  return f'{name}:{argument[1]}' if len(argument) == 2 and argument[1] else name


def _model_settings(config) -> dict:
  """Precision and memory settings of the run; .get keeps this working on configs older than these fields."""
  return dict(dtype=config.model.get('dtype', 'float32'), remat=bool(config.model.get('remat', False)),
              attention_impl=config.model.get('attention_impl', 'xla'),
              grad_accum_steps=int(config.train.get('grad_accum_steps', 1)))


def _num_classes(config) -> int | None:
  return 10 if kinds.get(config.model.type).class_conditional else None


def _experiment(config, batch_size: int, mesh) -> loop.Experiment:
  """The model, optimizer and schedule of `config` for synthetic data of its image shape."""
  sharding.check_batch_divides(batch_size, mesh)
  config.train.batch_size = batch_size
  check_accum = getattr(train_step_lib, 'check_grad_accum_steps', None)
  if check_accum is not None:  # Absent before train.grad_accum_steps existed.
    check_accum(batch_size, _model_settings(config)['grad_accum_steps'], mesh.size)
  info = data.DatasetInfo(name='synthetic', image_size=config.data.image_size,
                          num_channels=config.data.num_channels, num_classes=_num_classes(config),
                          num_examples=batch_size)
  return loop.build_experiment(config, tempfile.mkdtemp(), info, mesh)


def _synthetic_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """{'image': (B, H, W, C) uniform in [-1, 1], ['label': (B,)]} as numpy."""
  rng = np.random.default_rng(seed)
  size, channels = config.data.image_size, config.data.num_channels
  batch = {'image': rng.uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32)}
  if _num_classes(config):
    batch['label'] = rng.integers(0, _num_classes(config), batch_size).astype(np.int32)
  return batch


def _make_step(experiment: loop.Experiment):
  return train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, experiment.config,
                                        experiment.learning_rate_fn, experiment.mesh)


def _flops(compiled) -> float:
  """FLOPs of a compiled program by XLA's cost analysis (a dict, or a one-element list in older jax)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))


def _eps_program(model):
  """One sampling-time network evaluation, (params, x_t, t, prototype ids) -> eps, jitted as the samplers are."""
  return jax.jit(lambda params, x, t, ids: model.apply({'params': params}, x, t, prototype_ids=ids)[0],
                 compiler_options=xla_options.compiler_options())


def _network_flops(config, batch_size: int, mesh, sample_inputs) -> dict[str, float]:
  """FLOPs of the train step and one sampling evaluation by XLA's cost analysis, compiled with XLA's own route in
  place of each C++ kernel (attention 'xla', XLA's convolutions): the analysis cannot see into a kernel's custom
  call, so the programs that run would count most of the network's FLOPs out."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.attention_impl = 'xla'
  experiment = _experiment(config, batch_size, mesh)
  state = loop.initial_state(experiment)
  batch = sharding.global_batch(_synthetic_batch(config, batch_size), mesh)
  with conv_route.xla_route():
    train = _flops(_make_step(experiment).lower(state, batch).compile()) * mesh.size
    sample = _flops(_eps_program(experiment.model).lower(state.params, *sample_inputs).compile())
  return dict(train=train, sample=sample)


def _gib(num_bytes: int) -> float:
  return round(num_bytes / GIB, 3)


def measure_memory(config, batch_size: int, mesh) -> dict:
  """Compiles the train step on abstract shapes; XLA's per-device memory analysis and the step's FLOPs."""
  experiment = _experiment(config, batch_size, mesh)
  replicated, split = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  # eval_shape traces init (and the checkpoint probe of an empty workdir) without running it.
  state = jax.eval_shape(lambda: loop.initial_state(experiment))
  state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), state)
  batch = {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=split)
           for key, value in _synthetic_batch(config, batch_size).items()}
  start = time.perf_counter()
  # A GPU's attention choices ('auto': full-matrix while the logits fit, else chunked), not a CPU's cache blocks,
  # and no CPU kernels (XLA's FLOP count cannot see into them).
  with attention.resolve_auto_as('gpu'), conv_route.xla_route():
    lowered = _make_step(experiment).lower(state, batch)
  lower_seconds = time.perf_counter() - start
  options = dict(MEMORY_COMPILER_OPTIONS)
  if FLAGS.cpu_scheduler == 'memory' and jax.default_backend() == 'cpu':
    options.update(MEMORY_SCHEDULER_OPTIONS)
  start = time.perf_counter()
  compiled = lowered.compile(compiler_options=options)
  compile_seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  sizes = dict(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
               alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes,
               generated_code=stats.generated_code_size_in_bytes)
  # Donated state buffers are reused for the new state: aliased bytes are counted once.
  sizes['peak'] = sizes['argument'] + sizes['output'] - sizes['alias'] + sizes['temp']
  # The program XLA analyses is one device's share of the step: its FLOPs times the devices is the whole step's.
  flops_per_device = _flops(compiled)
  result = dict(
      mode='memory', config=_config_name(), model_type=config.model.type, image_size=config.data.image_size,
      batch=batch_size, devices=mesh.size, batch_per_device=batch_size // mesh.size, backend=jax.default_backend(),
      **_model_settings(config),
      **{f'{name}_bytes': int(value) for name, value in sizes.items()},
      **{f'{name}_gib': _gib(value) for name, value in sizes.items()},
      flops_per_device=flops_per_device, flops_per_step=flops_per_device * mesh.size,
      parameters=state_lib.count_parameters(state.params),
      lower_seconds=round(lower_seconds, 2), compile_seconds=round(compile_seconds, 2),
      compiler_options=options)
  if jax.default_backend() == 'cpu':
    result['note'] = CPU_NOTE + (CPU_BF16_NOTE if result['dtype'] == 'bfloat16' else '')
  return result


def measure_throughput(config, batch_size: int, mesh) -> dict:
  """Median seconds of the compiled train step on one synthetic batch."""
  experiment = _experiment(config, batch_size, mesh)
  state = loop.initial_state(experiment)
  step_fn = _make_step(experiment)
  batch = sharding.global_batch(_synthetic_batch(config, batch_size), mesh)

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
  return dict(
      model_type=config.model.type, image_size=config.data.image_size, batch=batch_size, devices=mesh.size,
      backend=jax.default_backend(), **_model_settings(config),
      xla_tuning=xla_options.compiler_options() is not None, huge_pages=huge_pages.active(),
      seconds_per_step=round(seconds, 5),
      images_per_second=round(batch_size / seconds, 2), compile_seconds=round(compile_seconds, 2),
      parameters=state_lib.count_parameters(params),
      unet_parameters=state_lib.count_parameters(params['unet']),
      prototype_parameters=state_lib.count_parameters(params.get('memory', {})))


def _cores() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def compare_torch(config, batch_size: int, mesh) -> dict:
  """Alternately timed JAX and torch train steps and sampling evaluations of the same model on the same batch."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.prototype_assignment = 'argmin'  # the step torch_reference restates: the reference's objective
  num_classes = _num_classes(config)
  experiment = _experiment(config, batch_size, mesh)
  numpy_batch = _synthetic_batch(config, batch_size)

  # JAX: the train step and one sampling-time network evaluation, compiled ahead of the timing.
  state = loop.initial_state(experiment)
  batch = sharding.global_batch(numpy_batch, mesh)
  start = time.perf_counter()
  jax_step = _make_step(experiment).lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  model = experiment.model
  sample_params = jax.tree.map(jnp.copy, state.params)  # the train step donates (and so deletes) state.params
  rng = np.random.default_rng(1)
  x_t = rng.standard_normal(numpy_batch['image'].shape).astype(np.float32)
  t = rng.integers(0, config.diffusion.num_timesteps, batch_size).astype(np.int32)
  ids = rng.integers(0, model.num_prototypes, batch_size).astype(np.int32)
  sample_inputs = jax.device_put((x_t, t, ids))
  jax_eps = _eps_program(model).lower(sample_params, *sample_inputs).compile()

  # torch: the reference with its own initialisation (timing does not depend on the weights' values).
  torch.manual_seed(0)
  torch_model = torch_reference.build_model(config, num_classes)
  trainer = torch_reference.ReferenceTrainer(torch_model, config)
  torch_images = torch.from_numpy(numpy_batch['image'].transpose(0, 3, 1, 2).copy())
  torch_labels = torch.from_numpy(numpy_batch['label']).long() if num_classes else None
  torch_x_t = torch.from_numpy(x_t.transpose(0, 3, 1, 2).copy())
  torch_t, torch_ids = torch.from_numpy(t).long(), torch.from_numpy(ids).long()

  def jax_train():
    nonlocal state
    state, metrics = jax_step(state, batch)
    jax.block_until_ready(metrics)

  def torch_train():
    trainer.step(torch_images, torch_labels)

  def jax_sample():
    jax.block_until_ready(jax_eps(sample_params, *sample_inputs))

  def torch_sample():
    trainer.eps(torch_x_t, torch_t, torch_ids)

  # Warm both up, then alternate them, so load from other processes falls on both sides alike. Each turn starts with
  # one untimed step: a JAX step right after a torch step ran up to 1.2 s slower (batch 32, 4.2 s otherwise), even
  # after a 1 s pause and with the same page-fault count, a cost neither side pays when training on its own.
  load_before = os.getloadavg()[0]
  medians = {}
  for kind, pair in (('train', (jax_train, torch_train)), ('sample', (jax_sample, torch_sample))):
    for fn in pair * FLAGS.warmup:
      fn()
    durations = {'jax': [], 'torch': []}
    for _ in range(FLAGS.steps):
      for side, fn in zip(('jax', 'torch'), pair):
        fn()
        durations[side].append(_timed(fn))
    for side in durations:
      medians[f'{side}_{kind}'] = statistics.median(durations[side])

  flops = _network_flops(config, batch_size, mesh, sample_inputs)
  result = dict(
      mode='compare_torch', config=_config_name(), model_type=config.model.type,
      image_size=config.data.image_size, batch=batch_size, devices=mesh.size, backend=jax.default_backend(),
      torch_threads=torch.get_num_threads(), cores=_cores(), steps=FLAGS.steps,
      # Other processes' load skews both sides (torch's the more): above ~cores, the numbers are noise.
      load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)], **_model_settings(config),
      xla_tuning=xla_options.compiler_options() is not None, huge_pages=huge_pages.active())
  for kind in ('train', 'sample'):
    jax_seconds, torch_seconds = medians[f'jax_{kind}'], medians[f'torch_{kind}']
    result.update({
        f'jax_{kind}_seconds': round(jax_seconds, 5), f'torch_{kind}_seconds': round(torch_seconds, 5),
        f'{kind}_torch_over_jax': round(torch_seconds / jax_seconds, 3), f'{kind}_flops': flops[kind],
        f'jax_{kind}_gflops_per_second': round(flops[kind] / jax_seconds / 1e9, 2),
        f'torch_{kind}_gflops_per_second': round(flops[kind] / torch_seconds / 1e9, 2)})
  result.update(
      jax_compile_seconds=round(compile_seconds, 2),
      jax_parameters=state_lib.count_parameters(sample_params),
      torch_parameters=torch_reference.count_parameters(torch_model),
      note=('*_torch_over_jax > 1: JAX is faster. FLOPs are XLA cost_analysis counts of the JAX programs with XLA '
            'routes in place of the C++ kernels (which the analysis cannot see into), used for both sides (the same '
            'network): a direct convolution\'s count, so for JAX\'s Winograd convolutions, which multiply less, '
            'GFLOP/s are direct-convolution equivalents. The JAX step also updates an EMA of the parameters and '
            'computes norms; torch_parameters - jax_parameters are the f_phi conv biases before BatchNorm, which '
            'ours drops. load_average: 1-minute load before and after the timed steps; above the core count, times '
            'are noise.'))
  return result


def main(argv):
  del argv
  if FLAGS.steps < 10 and not FLAGS.allow_few_steps:
    raise app.UsageError('--steps must be at least 10 (--allow_few_steps for tests).')
  compare = FLAGS['compare-torch'].value
  if FLAGS.memory and compare:
    raise app.UsageError('--memory and --compare-torch are separate runs: give one.')
  config = FLAGS.config
  mesh = _mesh()
  if FLAGS.memory:
    # Every row from a fresh compile: a persistent-cache hit would also report a meaningless compile time.
    jax.config.update('jax_enable_compilation_cache', False)
    measure, default_batch = measure_memory, config.train.batch_size
  elif compare:
    if not kinds.get(config.model.type).prototype_memory:
      raise app.UsageError(f'--compare-torch needs a pdm or spdm config, not model.type={config.model.type}.')
    # The torch side runs on the CPU, in this process: the JAX side must run there too, on one device.
    if jax.default_backend() != 'cpu' or mesh.size != 1:
      raise app.UsageError('--compare-torch compares one JAX CPU device with torch on the CPU: run it with '
                           'JAX_PLATFORMS=cpu and --devices=1.')
    torch.set_num_threads(FLAGS.torch_threads or _cores())
    measure, default_batch = compare_torch, 8
  else:
    measure, default_batch = measure_throughput, 8
  for batch_size in _batch_sizes(default_batch):
    print(json.dumps(measure(config, batch_size, mesh)), flush=True)


if __name__ == '__main__':
  app.run(main)
