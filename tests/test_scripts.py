"""Every script the README names starts from the repo root without installing the package; benchmark.py's --memory
and --compare-torch modes, memory_table.py, and the torch reference against our model."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'scripts', '*.py')))


@pytest.mark.parametrize('script', SCRIPTS)
def test_script_help_runs(script, tmp_path):
  # A bare environment (no PYTHONPATH) run from elsewhere: what a user typing the README's command gets.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', script), '--help'], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
  output = result.stdout + result.stderr
  # argparse exits 0 after its usage; absl prints its flags and 'Try --helpfull' and exits 1.
  assert result.returncode == 0 or 'Try --helpfull' in output, output[-2000:]
  assert 'Traceback' not in output, output[-2000:]


# --- scripts/benchmark.py --memory / --compare-torch, scripts/torch_reference.py ------------------------------------

def _benchmark_rows(args: list[str], env: dict[str, str]) -> list[dict]:
  """Runs scripts/benchmark.py from the repo root; its JSON lines, parsed."""
  result = subprocess.run([sys.executable, os.path.join('scripts', 'benchmark.py'), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]


def _env_without_device_count() -> dict[str, str]:
  """The test environment minus any forced host device count, so --devices decides."""
  env = dict(os.environ)
  flags = [f for f in env.pop('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f]
  if flags:
    env['XLA_FLAGS'] = ' '.join(flags)
  return env


def test_benchmark_memory_on_two_forced_devices():
  small, large = _benchmark_rows(['--memory', '--config=tests/tiny_cli_config.py:pdm', '--batch=2,32', '--devices=2'],
                                 _env_without_device_count())
  for row in (small, large):
    assert row['devices'] == 2 and row['backend'] == 'cpu' and row['dtype'] == 'float32', row
    assert min(row[f'{name}_bytes'] for name in ('argument', 'output', 'alias', 'temp')) > 0, row
    assert row['peak_bytes'] == row['argument_bytes'] + row['output_bytes'] - row['alias_bytes'] + row['temp_bytes']
    # The donated state (float32 params, EMA, Adam's two moments) is reused for the next state, not copied.
    assert row['alias_bytes'] >= 4 * 4 * row['parameters'], row
  assert (small['batch_per_device'], large['batch_per_device']) == (1, 16)
  assert small['parameters'] == large['parameters']
  # Per-device activations and work grow with the per-device batch.
  assert large['temp_bytes'] > small['temp_bytes']
  assert large['flops_per_step'] > small['flops_per_step'] > 0


def test_benchmark_compare_torch_prints_both_sides():
  pytest.importorskip('torch')
  pytest.importorskip('diffusers')
  env = _env_without_device_count()  # one JAX device, as torch has
  # Only the output's shape is checked here: an unoptimised LLVM build of the JAX programs compiles faster.
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
  (row,) = _benchmark_rows(['--compare-torch', '--config=tests/tiny_cli_config.py:pdm', '--batch=4', '--steps=2',
                            '--warmup=1', '--allow_few_steps'], env)
  assert (row['batch'], row['model_type'], row['steps']) == (4, 'pdm', 2)
  assert isinstance(row['huge_pages'], bool)
  for kind in ('train', 'sample'):
    jax_seconds, torch_seconds = row[f'jax_{kind}_seconds'], row[f'torch_{kind}_seconds']
    assert jax_seconds > 0 and torch_seconds > 0, row
    assert row[f'{kind}_torch_over_jax'] == pytest.approx(torch_seconds / jax_seconds, rel=0.01)
    assert row[f'{kind}_flops'] > 0 and row[f'jax_{kind}_gflops_per_second'] > 0, row
  assert row['train_flops'] > row['sample_flops']
  # The same network on both sides, but for the reference's f_phi conv bias before BatchNorm (128 channels here).
  assert row['torch_parameters'] - row['jax_parameters'] == 128


def _jax_variables_of(torch, reference, model, image_shape):
  """pdm_jax variables of `model` holding the torch ReferencePDM's weights (UNet, prototypes, f_phi)."""
  from pdm_jax.models import diffusers_import  # pylint: disable=g-import-not-at-top
  from pdm_jax.models import unet as unet_lib  # pylint: disable=g-import-not-at-top
  from pdm_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  # Shapes only: every leaf comes from torch, and compiling init would take longer than the rest of the test.
  shapes = jax.eval_shape(lambda key: state_lib.init_variables(model, key, image_shape), jax.random.PRNGKey(0))
  state_dict = {name: value.detach().numpy() for name, value in reference.state_dict().items()}
  unet = unet_lib.UNet2D(**model.unet_config, bottleneck_attention=True)
  f_phi, stats = {}, {}
  layers = list(reference.f_phi.encoder)
  convs = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Conv2d)]
  for j, index in enumerate(convs):
    f_phi[f'conv_{j}'] = {'kernel': state_dict[f'f_phi.encoder.{index}.weight'].transpose(2, 3, 1, 0)}
    if 'bias' in shapes['params']['memory']['f_phi'][f'conv_{j}']:  # ours drops the bias before a BatchNorm
      f_phi[f'conv_{j}']['bias'] = state_dict[f'f_phi.encoder.{index}.bias']
    if index + 1 < len(layers) and isinstance(layers[index + 1], torch.nn.BatchNorm2d):
      norm = f'f_phi.encoder.{index + 1}'
      f_phi[f'bn_{j}'] = {'scale': state_dict[f'{norm}.weight'], 'bias': state_dict[f'{norm}.bias']}
      stats[f'bn_{j}'] = {'mean': state_dict[f'{norm}.running_mean'], 'var': state_dict[f'{norm}.running_var']}
  variables = {
      'params': {'unet': diffusers_import.convert_diffusers_state_dict(state_dict, unet, prefix='unet.'),
                 'memory': {'prototypes': state_dict['prototypes'], 'f_phi': f_phi}},
      'batch_stats': {'memory': {'f_phi': stats}}}
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda leaf: leaf.shape, shapes)
  return variables


def test_torch_reference_loss_matches_jax_model(tiny):
  torch = pytest.importorskip('torch')
  pytest.importorskip('diffusers')
  from pdm_jax import diffusion  # pylint: disable=g-import-not-at-top
  from pdm_jax.models import factory  # pylint: disable=g-import-not-at-top
  from scripts import torch_reference  # pylint: disable=g-import-not-at-top
  config = tiny('pdm')
  config.model.prototype_assignment = 'argmin'  # the reference's objective, which torch_reference restates
  size, channels = config.data.image_size, config.data.num_channels
  torch.manual_seed(0)
  reference = torch_reference.build_model(config).train()
  model = factory.build_model(config.model, image_size=size, num_channels=channels, num_classes=None)
  variables = _jax_variables_of(torch, reference, model, (size, size, channels))

  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (4, size, size, channels)).astype(np.float32)
  noise = rng.standard_normal(images.shape).astype(np.float32)
  t = np.array([0, 7, 23, 49])
  schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps,
                                     config.diffusion.beta_start, config.diffusion.beta_end)
  x_t = diffusion.q_sample(schedule, images, t, noise)
  apply = jax.jit(lambda v, x, t, clean: model.apply(v, x, t, clean_images=clean, train=True, mutable=['batch_stats']))
  (output, aux), _ = apply(variables, x_t, t, images)
  jax_loss = float(jnp.mean((output - noise)**2) + aux['prototype_loss'])

  trainer = torch_reference.ReferenceTrainer(reference, config)
  to_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  torch_t = torch.from_numpy(t)
  torch_x_t = trainer.noise_scheduler.add_noise(to_torch(images), to_torch(noise), torch_t)
  np.testing.assert_allclose(torch_x_t.numpy().transpose(0, 2, 3, 1), x_t, atol=1e-5)
  with torch.no_grad():
    prediction, prototype_loss = reference(torch_x_t, torch_t, clean_images=to_torch(images))
    torch_loss = float(torch.nn.functional.mse_loss(prediction, to_torch(noise)) + prototype_loss)
  # The network output on its own: in the total loss, its part is small next to the prototype terms.
  prediction = prediction.numpy().transpose(0, 2, 3, 1)
  assert np.abs(np.asarray(output) - prediction).max() <= 1e-4 * np.abs(prediction).max()
  assert float(aux['prototype_loss']) == pytest.approx(float(prototype_loss), rel=1e-4)
  assert jax_loss == pytest.approx(torch_loss, rel=1e-4)


def test_memory_table_skips_finished_rows_and_prints_the_table(tmp_path):
  row = dict(config='cifar10_pdm', devices=2, dtype='float32', remat=True, batch=64, extra=[])
  results = tmp_path / 'memory.jsonl'
  results.write_text(json.dumps(dict(row=row, peak_bytes=50 * 2**30, batch_per_device=32)) + '\n' +
                     json.dumps(dict(row=dict(row, remat=False), error='RESOURCE_EXHAUSTED')) + '\n')

  def memory_table(*args):
    result = subprocess.run([sys.executable, os.path.join('scripts', 'memory_table.py'), '--configs=cifar10_pdm',
                             '--devices=2', '--dtypes=float32', f'--out={results}', *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr, [line for line in result.stdout.splitlines() if line.startswith('| cifar10_pdm')]

  # The finished row is not compiled again (a killed run resumes after it).
  stderr, lines = memory_table('--remat=true')
  assert '1 of 1 rows already in' in stderr and 'running 0' in stderr
  assert lines == ['| cifar10_pdm | 2 | float32 | yes | 32 | 50.00 | 40 | no (125%) |']
  # A failed row would be run again; --table_only shows it as it stands.
  stderr, lines = memory_table('--remat=true,false', '--table_only')
  assert lines[1] == '| cifar10_pdm | 2 | float32 | no | 32 | error: RESOURCE_EXHAUSTED | 40 | - |'
