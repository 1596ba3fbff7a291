"""Gradient accumulation: train.grad_accum_steps = 4 over a batch of 32 against one batch of 32, on 1 and 4 devices.

Run as a script (by test_multi_device_accumulation_matches_one_batch_and_keeps_rows_local), it trains on a mesh of
forced CPU devices: python tests/test_grad_accum.py MODEL_TYPE NUM_DEVICES OUT.npz
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdm_jax import data
from pdm_jax.training import loop
from pdm_jax.training import sharding
from pdm_jax.training import train_step as train_step_lib
from tests.tiny_configs import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_SIZE = 32
MICRO = 4
# As in test_training: attention key biases get a pure rounding-noise gradient (softmax cancels them exactly),
# which Adam scales to lr-sized steps; they change no output, so the network's output stands in for them.
_NULL_GRADIENT_KEYS = ("['to_k']['bias']", "['k_proj']['bias']")
# All-gathers allowed in the accumulated step: the (n, B/n) prototype selections counted over the whole batch.
_MAX_GATHERED_ELEMENTS = BATCH_SIZE


def _config(model_type: str, grad_accum_steps: int):
  # No warmup: step 0 already has a non-zero learning rate, so the first update moves the parameters.
  return tiny_config(model_type, batch_size=BATCH_SIZE, grad_accum_steps=grad_accum_steps, warmup_steps=0)


def run_steps(model_type: str, grad_accum_steps: int, workdir: str, num_devices: int = 1, num_steps: int = 2,
              hlo: list[str] | None = None) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
  """num_steps steps of the batch stream -> (flat {key: array} of state, metrics and probe output, batches seen).

  Flat keys: 'state/<field><path>', 'metrics<step>/<name>', 'output'. hlo, when given, receives the compiled text.
  """
  config = _config(model_type, grad_accum_steps)
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  info, batches = data.build(config.data, global_batch_size=BATCH_SIZE, seed=config.seed)
  experiment = loop.build_experiment(config, workdir, info, mesh)
  state = loop.initial_state(experiment)
  step_fn = train_step_lib.make_train_step(experiment.model, experiment.tx, experiment.schedule, config,
                                           experiment.learning_rate_fn, mesh)
  flat, seen = {}, []
  for i in range(num_steps):
    seen.append(next(batches))
    batch = sharding.global_batch(seen[-1], mesh)
    if hlo is not None and i == 0:
      step_fn = step_fn.lower(state, batch).compile()  # the same program for every step: compiled once
      hlo.append(step_fn.as_text())
    state, metrics = step_fn(state, batch)
    flat.update({f'metrics{i}/{k}': np.asarray(v) for k, v in jax.device_get(metrics).items()})
  fields = dict(params=state.params, ema_params=state.ema_params, opt_state=state.opt_state,
                batch_stats=state.batch_stats, step=state.step)
  for name, tree in fields.items():
    flat.update({f'state/{name}{jax.tree_util.keystr(path)}': np.asarray(leaf)
                 for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))})
  probe = jax.random.normal(jax.random.PRNGKey(7), (8, 8, 8, 1))
  output, _ = experiment.model.apply({'params': state.params, 'batch_stats': state.batch_stats}, probe,
                                     jnp.arange(8) * 6, prototype_ids=jnp.arange(8) % 10)
  flat['output'] = np.asarray(output)
  return flat, seen


def _relative_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
  """{key: max |a - b| / max |b|} over the keys both hold, null-gradient parameters left out."""
  assert set(a) == set(b)
  diffs = {}
  for key in a:
    if any(null in key for null in _NULL_GRADIENT_KEYS):
      continue
    x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
    diffs[key] = float(np.abs(x - y).max()) / max(float(np.abs(y).max()), 1e-12)
  return diffs


# Adam's first update is g / (|g| + eps) per element: where |g| ~ eps (1e-8; a few kernel entries here), fp32
# rounding of the gradient (summed in another order) moves the update by a visible part of the learning rate.
# Measured (4 devices): parameters and EMA up to 1.02e-4 of their leaf's max apart, the gradient moments (opt_state)
# up to 1.1e-5 (an attention bias's second moment); a wrong update (two updates, a missed EMA) would be ~1e-2 apart.
_TOLERANCES = {'state/params': 2e-4, 'state/ema_params': 2e-4, 'state/opt_state': 3e-5, 'state/step': 0.0,
               'metrics': 1e-5, 'output': 1e-5}


def _assert_same_step(accumulated: dict[str, np.ndarray], whole: dict[str, np.ndarray]) -> None:
  diffs = _relative_differences(accumulated, whole)
  for prefix, tolerance in _TOLERANCES.items():
    compared = {k: d for k, d in diffs.items() if k.startswith(prefix)}
    assert compared, prefix
    worst = max(compared, key=compared.get)
    assert compared[worst] <= tolerance, (worst, compared[worst])
  assert all(k.startswith(tuple(_TOLERANCES)) for k in diffs)
  assert int(accumulated['state/step']) == 2


def test_accumulated_step_equals_one_batch_step(tmp_path):
  """ddpm (no BatchNorm): 2 steps of 4 micro-batches of 8 = 2 steps of one batch of 32: params, Adam, EMA, metrics."""
  whole, _ = run_steps('ddpm', 1, str(tmp_path / 'whole'))
  hlo = []
  accumulated, _ = run_steps('ddpm', MICRO, str(tmp_path / 'accumulated'), hlo=hlo)
  _assert_same_step(accumulated, whole)
  # The update really moved the parameters (step 0 has a non-zero learning rate).
  assert float(whole['metrics0/learning_rate']) > 0
  if jax.default_backend() == 'cpu':
    # Every convolution of the scanned micro-batch step is one XLA:CPU runs as a library call (models/convolution.py):
    # autodiff's own backward convolutions compiled to naive loops there and ran the step ~40x slower.
    convolutions = [line for line in hlo[0].splitlines() if re.search(r'\bconvolution\(', line)]
    assert convolutions and all('dim_labels=b01f_01io->b01f' in line and 'lhs_dilate' not in line
                                for line in convolutions), convolutions


def test_multi_device_accumulation_matches_one_batch_and_keeps_rows_local(tmp_path):
  """On 4 forced CPU devices: the same equality, and the compiled step moves no image rows between devices."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', PYTHONPATH=REPO)
  out = tmp_path / 'four_devices.npz'
  subprocess.run([sys.executable, os.path.abspath(__file__), 'ddpm', '4', str(out)], check=True, env=env, cwd=REPO,
                 capture_output=True)
  saved = np.load(out)
  whole = {k[len('whole/'):]: saved[k] for k in saved.files if k.startswith('whole/')}
  accumulated = {k[len('accumulated/'):]: saved[k] for k in saved.files if k.startswith('accumulated/')}
  _assert_same_step(accumulated, whole)
  # The micro-batch split keeps each device's rows on it: no all-to-all or permute, no gathered image rows.
  assert int(saved['hlo/all_to_all']) == 0
  assert int(saved['hlo/collective_permute']) == 0
  assert int(saved['hlo/max_all_gather_elements']) <= _MAX_GATHERED_ELEMENTS


def _collective_counts(hlo_text: str) -> dict[str, int]:
  """Counts of all-to-all / collective-permute ops and the largest all-gather result (elements) in compiled HLO."""
  counts = dict(all_to_all=0, collective_permute=0, max_all_gather_elements=0)
  for line in hlo_text.splitlines():
    match = re.search(r'=\s*(.+?)\s+(all-to-all|collective-permute|all-gather)(-start)?\(', line)
    if not match:
      continue
    op = match.group(2)
    if op == 'all-gather':
      dims = re.findall(r'\[([\d,]*)\]', match.group(1))
      elements = max(int(np.prod([int(d) for d in dims_text.split(',') if d])) for dims_text in dims)
      counts['max_all_gather_elements'] = max(counts['max_all_gather_elements'], elements)
    else:
      counts[op.replace('-', '_')] += 1
  return counts


def test_collective_counts_sees_gathers_and_all_to_all():
  hlo_text = ('  %all-gather = f32[32,8,8,1]{3,2,1,0} all-gather(f32[8,8,8,1]{3,2,1,0} %x), dimensions={0}\n'
              '  %all-to-all.1 = f32[4,8]{1,0} all-to-all(f32[4,8]{1,0} %y), dimensions={0}\n')
  assert _collective_counts(hlo_text) == dict(all_to_all=1, collective_permute=0, max_all_gather_elements=2048)


def _batch_norm_references(model_type: str, images: np.ndarray, workdir: str) -> dict[int, dict[str, np.ndarray]]:
  """{n: f_phi's running statistics after n BatchNorm updates from init, on rows i, i+n, i+2n, ... in turn}."""
  config = _config(model_type, 1)
  info = data.build(config.data, global_batch_size=BATCH_SIZE, seed=config.seed)[0]
  experiment = loop.build_experiment(config, workdir, info, sharding.data_mesh(jax.devices()[:1]))
  state = loop.initial_state(experiment)
  references = {}
  for num_micro in (1, MICRO):
    batch_stats = state.batch_stats
    for i in range(num_micro):
      _, mutated = experiment.model.apply(
          {'params': state.params, 'batch_stats': batch_stats}, jnp.asarray(images[i::num_micro]),
          method=lambda module, x: module.memory.encode(x, train=True), mutable=['batch_stats'])
      batch_stats = mutated['batch_stats']
    references[num_micro] = {f'state/batch_stats{jax.tree_util.keystr(path)}': np.asarray(leaf)
                             for path, leaf in jax.tree_util.tree_leaves_with_path(batch_stats)}
  return references


@pytest.mark.parametrize('model_type', ['spdm', 'pdm'])
def test_batch_norm_sees_micro_batches(model_type, tmp_path):
  """Known difference (README): f_phi's BatchNorm normalises each micro-batch alone and updates its running
  statistics once per micro-batch; the diffusion loss still matches for s-PDM, whose prototype is the label."""
  whole, seen = run_steps(model_type, 1, str(tmp_path / 'whole'), num_steps=1)
  accumulated, _ = run_steps(model_type, MICRO, str(tmp_path / 'accumulated'), num_steps=1)
  stats = sorted(k for k in whole if k.startswith('state/batch_stats'))
  assert stats
  references = _batch_norm_references(model_type, seen[0]['image'], str(tmp_path / 'reference'))
  one_update, four_updates = references[1], references[MICRO]
  for key in stats:
    np.testing.assert_allclose(whole[key], one_update[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(accumulated[key], four_updates[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # ... which is not what one batch of 32 gives (the documented difference, not rounding).
  assert max(_relative_differences({k: accumulated[k] for k in stats}, {k: whole[k] for k in stats}).values()) > 1e-2
  # The compactness term depends on the prototypes only.
  np.testing.assert_allclose(accumulated['metrics0/compact_loss'], whole['metrics0/compact_loss'], rtol=1e-6)
  if model_type == 'spdm':
    # The UNet never sees f_phi: its loss is that of the whole batch; the prototype losses (through f_phi) are not.
    np.testing.assert_allclose(accumulated['metrics0/diffusion_loss'], whole['metrics0/diffusion_loss'], rtol=1e-5)
    assert abs(float(accumulated['metrics0/align_loss']) / float(whole['metrics0/align_loss']) - 1) > 1e-4
  # pdm: the selected prototype is the argmin over f_phi's features, so it (and through it the diffusion loss) can
  # change too; measured at this seed: diffusion loss 0.3% apart, 6 prototypes used instead of 7.


def test_grad_accum_steps_validation(tmp_path):
  mesh = sharding.data_mesh(jax.devices()[:1])
  check = train_step_lib.check_grad_accum_steps
  check(32, 4, 4)  # micro-batches of 8 split over 4 devices
  for bad in (0, -2, 2.0, True, '4'):
    with pytest.raises(ValueError, match='must be an integer >= 1'):
      check(32, bad, 1)
  with pytest.raises(ValueError, match=r'batch_size=32 into equal micro-batches .* use one of \[1, 2, 4, 8, 16, 32\]'):
    check(32, 3, 1)
  with pytest.raises(ValueError, match=r'over 4 device\(s\): use one of \[1, 2, 4, 8\]'):
    check(32, 16, 4)  # micro-batches of 2 cannot split over 4 devices
  # The loop refuses before building anything.
  with pytest.raises(ValueError, match='grad_accum_steps=5'):
    loop.train(_config('ddpm', 5), str(tmp_path), mesh=mesh)


def _main(model_type: str, num_devices: int, out_path: str) -> None:
  workdir = os.path.dirname(os.path.abspath(out_path))
  whole, _ = run_steps(model_type, 1, os.path.join(workdir, 'whole'), num_devices)
  hlo: list[str] = []
  accumulated, _ = run_steps(model_type, MICRO, os.path.join(workdir, 'accumulated'), num_devices, hlo=hlo)
  saved = {f'whole/{k}': v for k, v in whole.items()} | {f'accumulated/{k}': v for k, v in accumulated.items()}
  saved |= {f'hlo/{k}': np.asarray(v) for k, v in _collective_counts(hlo[0]).items()}
  np.savez(out_path, **saved)


if __name__ == '__main__':
  _main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
