"""Per-device peak memory of every paper config's train step (benchmark.py --memory), as JSON lines and a table.

  python scripts/memory_table.py --out=memory_table.jsonl
  python scripts/memory_table.py --out=chunked.jsonl --extra=--config.model.attention_impl=chunked \
      --extra=--config.train.grad_accum_steps=2
  python scripts/memory_table.py --configs=cifar10_pdm --devices=1 --dtypes=float32 --remat=false   # one row

Rows: configs/{cifar10,celeba,eurosat,stl10,tiny_imagenet}_{pdm,spdm}.py x --devices (1, 2) x --dtypes (float32,
bfloat16) x --remat (off, on), at global batch --batch (64), the settings given as --config.model.* overrides (and
--extra arguments passed through to every row). Each row is one benchmark.py subprocess (its own forced host device
count); its JSON line is appended to --out as soon as it finishes and rows already there are skipped, so a killed
run continues where it stopped (failed rows are retried). Then a Markdown table: peak bytes per device and whether
they fit an 80 GB GPU (1 device) or 40 GB per GPU (2 devices). Without a GPU these are XLA:CPU numbers, a proxy for
a GPU compile (see scripts/benchmark.py; --extra=--cpu_scheduler=memory for XLA:CPU's memory-optimised schedule).
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ('cifar10', 'celeba', 'eurosat', 'stl10', 'tiny_imagenet')
PAPER_CONFIGS = tuple(f'{dataset}_{kind}' for dataset in DATASETS for kind in ('pdm', 'spdm'))
# GPU memory per device for a run on that many devices (A100/H100 80 GB; A100 40 GB): 80 and 40 GiB.
BUDGET_GIB = {1: 80, 2: 40}
GIB = 2**30

flags.DEFINE_list('configs', list(PAPER_CONFIGS), 'Config names under configs/ (without .py).')
flags.DEFINE_list('devices', ['1', '2'], 'Device counts (host devices forced on a CPU).')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'model.dtype values.')
flags.DEFINE_list('remat', ['false', 'true'], 'model.remat values.')
flags.DEFINE_integer('batch', 64, 'Global batch size of every row.')
flags.DEFINE_multi_string('extra', [], 'Extra benchmark.py arguments for every row, e.g. '
                          '--extra=--config.model.attention_impl=chunked (part of each row\'s identity).')
flags.DEFINE_string('out', 'memory_table.jsonl', 'JSON lines file of results; rows already in it are skipped.')
flags.DEFINE_integer('timeout', 3600, 'Seconds allowed per row.')
flags.DEFINE_bool('table_only', False, 'Print the table of the rows already in --out; compile nothing.')
FLAGS = flags.FLAGS


def _bool(text: str) -> bool:
  if text.lower() in ('true', '1', 'yes', 'on'):
    return True
  if text.lower() in ('false', '0', 'no', 'off'):
    return False
  raise app.UsageError(f'--remat values are true or false, got {text!r}.')


def requested_rows() -> list[dict]:
  """Every (config, devices, dtype, remat) row asked for, in table order."""
  for name in FLAGS.configs:
    if not os.path.isfile(os.path.join(REPO, 'configs', f'{name}.py')):
      raise app.UsageError(f'--configs: no configs/{name}.py.')
  return [dict(config=name, devices=int(devices), dtype=dtype, remat=_bool(remat), batch=FLAGS.batch,
               extra=list(FLAGS.extra))
          for name in FLAGS.configs for devices in FLAGS.devices for dtype in FLAGS.dtypes for remat in FLAGS.remat]


def _key(row: dict) -> str:
  return json.dumps(row, sort_keys=True)


def read_results(path: str) -> dict[str, dict]:
  """{row key: its latest result} from a JSON lines file (missing file: empty)."""
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          result = json.loads(line)
          results[_key(result['row'])] = result
  return results


def _env() -> dict[str, str]:
  """This environment minus any forced host device count: each row's --devices decides its own."""
  env = dict(os.environ)
  xla_flags = [f for f in env.pop('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f]
  if xla_flags:
    env['XLA_FLAGS'] = ' '.join(xla_flags)
  return env


def run_row(row: dict) -> dict:
  """benchmark.py --memory for one row in a subprocess -> its JSON result (or the error), with the row attached."""
  command = [sys.executable, os.path.join(REPO, 'scripts', 'benchmark.py'), '--memory',
             f'--config={os.path.join(REPO, "configs", row["config"] + ".py")}', f'--batch={row["batch"]}',
             f'--devices={row["devices"]}', f'--config.model.dtype={row["dtype"]}',
             f'--config.model.remat={row["remat"]}', *row['extra']]
  start = time.time()
  try:
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=FLAGS.timeout)
  except subprocess.TimeoutExpired:
    return dict(row=row, error=f'timed out after {FLAGS.timeout} s', seconds=round(time.time() - start, 1))
  lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
  if result.returncode or not lines:
    last = [line for line in result.stderr.splitlines() if line.strip()][-1:] or [f'exit {result.returncode}']
    return dict(row=row, error=last[0][-500:], seconds=round(time.time() - start, 1))
  return dict(json.loads(lines[-1]), row=row, seconds=round(time.time() - start, 1))


def markdown_table(rows: list[dict], results: dict[str, dict]) -> str:
  """One line per row: config, devices, dtype, remat, per-device batch and peak, and whether it fits the GPU."""
  with_extra = any(row['extra'] for row in rows)
  header = ['config', 'devices', 'dtype', 'remat'] + (['extra'] if with_extra else []) + [
      'batch / device', 'peak GiB / device', 'GPU GiB / device', 'fits']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    result = results.get(_key(row))
    cells = [row['config'], str(row['devices']), row['dtype'], 'yes' if row['remat'] else 'no']
    if with_extra:
      cells.append(' '.join(row['extra']))
    budget = BUDGET_GIB.get(row['devices'])
    if result is None:
      cells += [str(row['batch'] // row['devices']), 'not run', str(budget or '-'), '-']
    elif 'error' in result:
      cells += [str(row['batch'] // row['devices']), f'error: {result["error"][:80]}', str(budget or '-'), '-']
    else:
      peak = result['peak_bytes'] / GIB
      fits = '-' if budget is None else f'{"yes" if peak <= budget else "no"} ({peak / budget:.0%})'
      cells += [str(result['batch_per_device']), f'{peak:.2f}', str(budget or '-'), fits]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  rows = requested_rows()
  results = read_results(FLAGS.out)
  if not FLAGS.table_only:
    todo = [row for row in rows if 'peak_bytes' not in results.get(_key(row), {})]
    print(f'{len(rows) - len(todo)} of {len(rows)} rows already in {FLAGS.out}; running {len(todo)}.', file=sys.stderr)
    for i, row in enumerate(todo, 1):
      result = run_row(row)
      with open(FLAGS.out, 'a') as f:
        f.write(json.dumps(result) + '\n')
      results[_key(row)] = result
      outcome = result.get('error') or f'peak {result["peak_gib"]:.2f} GiB / device'
      label = ' '.join([row['config'], f'devices={row["devices"]}', row['dtype'], f'remat={row["remat"]}',
                        *row['extra']])
      print(f'[{i}/{len(todo)}] {label}: {outcome} ({result["seconds"]:.0f} s)', file=sys.stderr, flush=True)
  print(markdown_table(rows, results))
  print('\nPeak = arguments + outputs - aliased (donated) + temporaries, per device, from XLA\'s memory analysis; on a '
        'CPU a proxy for a GPU compile (XLA:CPU computes bfloat16 convolutions and dots in float32, understating '
        'bfloat16\'s savings). fits: peak <= the GPU\'s memory; JAX preallocates 75% of it by default '
        '(XLA_PYTHON_CLIENT_MEM_FRACTION), so rows above 75% need a larger fraction.')


if __name__ == '__main__':
  app.run(main)
