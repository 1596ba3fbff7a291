"""The paper's comparison in one command: trains (or collects) several methods on one dataset with the same budget,
evaluates each with the same sampler, steps and sample count, and writes a Markdown table, a CSV and a figure.

  python scripts/compare.py --dataset=digits --out=workdirs/compare_digits
  python scripts/compare.py --dataset=cifar10 --out=workdirs/compare_cifar10 --config.data.data_dir=/data/tfds

Each method runs `main.py` (train, then --mode=eval) in <out>/<method>, so an interrupted comparison resumes where it
stopped and a finished method is not retrained (--collect_only never trains). The history (metric vs training step)
comes from the periodic evaluations every --eval_every steps (<workdir>/eval/periodic.jsonl).
Outputs: <out>/compare.md, <out>/compare.csv, <out>/compare.png.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('ddpm', 'cddpm', 'protodiffusion', 'pdm', 'spdm')
DATASETS = ('digits', 'cifar10', 'celeba', 'eurosat', 'stl10', 'tiny_imagenet')

# (key in eval/metrics.json or the final report, column title, format); a column shows where any method has it.
COLUMNS = (
    ('step', 'steps', '{:d}'),
    ('digits_accuracy', 'class accuracy', '{:.3f}'),
    ('digits_frechet_distance', 'Frechet dist. (classifier)', '{:.2f}'),
    ('digits_num_classes_present', 'classes present', '{:d}'),
    ('fid', 'FID', '{:.2f}'),
    ('kid_mean', 'KID', '{:.4f}'),
    ('is_mean', 'IS', '{:.2f}'),
    ('prototypes_in_use', 'prototypes in use', '{:d}'),
    ('prototype_class_nmi', 'prototype/class NMI', '{:.2f}'),
    ('num_samples', 'samples', '{:d}'),
)
# The history's metric, by preference: the first one the periodic evaluations hold.
HISTORY_METRICS = ('fid', 'digits_frechet_distance')


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  parser.add_argument('--dataset', default='digits', choices=DATASETS)
  parser.add_argument('--methods', default=','.join(METHODS), help='comma-separated model types')
  parser.add_argument('--out', required=True, help='root folder: one workdir per method, and the outputs')
  parser.add_argument('--config_template', default='configs/{dataset}_{method}.py',
                      help='config path per method; {dataset} and {method} are filled in')
  parser.add_argument('--num_steps', type=int, default=None, help="training budget of every method (the configs' own "
                      'when unset; the same for all)')
  parser.add_argument('--eval_every', type=int, default=None, help='steps between periodic evaluations (history)')
  parser.add_argument('--eval_samples', type=int, default=1000, help='samples scored per method at the end')
  parser.add_argument('--periodic_samples', type=int, default=200, help='samples scored per periodic evaluation')
  parser.add_argument('--sample_method', default='ddim', help='sampler of every evaluation')
  parser.add_argument('--sample_steps', type=int, default=50, help='sampler steps of every evaluation')
  parser.add_argument('--collect_only', action='store_true', help='only read finished workdirs; train nothing')
  # Anything else (--config.<field>=<value>) goes to every run unchanged.
  args, overrides = parser.parse_known_args(argv)
  unknown = [o for o in overrides if not o.startswith('--config.')]
  if unknown:
    parser.error(f'unknown arguments {unknown}: only --config.<field>=<value> overrides are passed to the runs.')
  args.methods = [m.strip() for m in args.methods.split(',') if m.strip()]
  bad = [m for m in args.methods if m not in METHODS]
  if bad:
    parser.error(f'unknown method(s) {bad}: use some of {", ".join(METHODS)}.')
  return args, overrides


def run_overrides(args: argparse.Namespace) -> list[str]:
  """The settings every method shares: budget, evaluation sampler, steps and sample counts."""
  shared = [f'--config.sample.method={args.sample_method}', f'--config.sample.num_steps={args.sample_steps}',
            f'--config.eval.num_samples={args.eval_samples}',
            f'--config.eval.periodic_num_samples={args.periodic_samples}']
  if args.num_steps is not None:
    shared.append(f'--config.train.num_steps={args.num_steps}')
  if args.eval_every is not None:
    shared.append(f'--config.eval.every_steps={args.eval_every}')
  if args.dataset == 'digits':
    # Inception features of 8x8 digits mean little: digits are scored by the digits classifier.
    shared.append('--config.eval.inception=False')
  return shared


def _main_py(config: str, workdir: str, options: list[str]) -> None:
  command = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={config}', f'--workdir={workdir}', *options]
  print('+', ' '.join(command), flush=True)
  result = subprocess.run(command, cwd=REPO)
  if result.returncode:
    sys.exit(f'error: {os.path.basename(workdir)} failed (exit {result.returncode}): its command is above; rerun '
             'this script to resume from its checkpoints.')


def run_method(args: argparse.Namespace, overrides: list[str], method: str) -> str:
  """Trains and evaluates one method (each step skipped when its output exists); returns its workdir."""
  workdir = os.path.join(args.out, method)
  config = os.path.join(REPO, args.config_template.format(dataset=args.dataset, method=method))
  if not os.path.isfile(config.split(':')[0]):
    sys.exit(f'error: no config {config} for method {method} on {args.dataset}: leave {method} out of --methods.')
  options = run_overrides(args) + overrides
  if not args.collect_only:
    if not os.path.isfile(os.path.join(workdir, 'samples', 'final_report.json')):
      _main_py(config, workdir, options)
    if not os.path.isfile(os.path.join(workdir, 'eval', 'metrics.json')):
      _main_py(config, workdir, options + ['--mode=eval'])
  return workdir


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def collect(workdir: str) -> tuple[dict, list[dict]]:
  """(final results: eval/metrics.json plus the prototype health of the final report, periodic history)."""
  metrics_path = os.path.join(workdir, 'eval', 'metrics.json')
  if not os.path.isfile(metrics_path):
    raise FileNotFoundError(f'{metrics_path} is missing: run this script without --collect_only to train and '
                            'evaluate that method.')
  result = _read_json(metrics_path)
  report_path = os.path.join(workdir, 'samples', 'final_report.json')
  if os.path.isfile(report_path):
    report = _read_json(report_path)
    result.update({k: report[k] for k in ('prototypes_in_use', 'prototype_class_nmi') if k in report})
  history = []
  history_path = os.path.join(workdir, 'eval', 'periodic.jsonl')
  if os.path.isfile(history_path):
    with open(history_path) as f:
      history = [json.loads(line) for line in f if line.strip()]
  return result, history


def _cell(value, fmt: str) -> str:
  if value is None:
    return '-'
  if fmt.endswith('d}'):
    value = int(round(value))
  return fmt.format(value)


def write_table(results: dict[str, dict], out: str) -> tuple[str, str]:
  """Writes <out>/compare.md and compare.csv (one row per method; columns any method has); returns their paths."""
  columns = [c for c in COLUMNS if any(c[0] in r for r in results.values())]
  md_path, csv_path = os.path.join(out, 'compare.md'), os.path.join(out, 'compare.csv')
  lines = ['| method | ' + ' | '.join(title for _, title, _ in columns) + ' |',
           '|---|' + '---|' * len(columns)]
  for method, result in results.items():
    lines.append(f'| {method} | ' + ' | '.join(_cell(result.get(key), fmt) for key, _, fmt in columns) + ' |')
  first = next(iter(results.values()))
  lines.append('')
  lines.append(f'Sampler: {first.get("method")} with {first.get("num_steps")} steps, {first.get("num_samples")} '
               'samples per method.')
  with open(md_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['method'] + [key for key, _, _ in columns])
    for method, result in results.items():
      writer.writerow([method] + [result.get(key, '') for key, _, _ in columns])
  return md_path, csv_path


def write_figure(histories: dict[str, list[dict]], out: str) -> str | None:
  """<out>/compare.png: the history metric vs training step, one line per method; None without any history."""
  metric = next((m for m in HISTORY_METRICS if any(m in h for hs in histories.values() for h in hs)), None)
  if metric is None:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, history in histories.items():
    points = [(h['step'], h[metric]) for h in history if metric in h]
    if points:
      ax.plot(*zip(*points), marker='o', label=method)
  ax.set_xlabel('training step')
  ax.set_ylabel(dict((k, t) for k, t, _ in COLUMNS)[metric])
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(out, 'compare.png')
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv=None) -> None:
  args, overrides = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  results, histories = {}, {}
  for method in args.methods:
    workdir = run_method(args, overrides, method)
    try:
      results[method], histories[method] = collect(workdir)
    except FileNotFoundError as e:
      sys.exit(f'error: {e}')
  md_path, csv_path = write_table(results, args.out)
  figure = write_figure(histories, args.out)
  with open(md_path) as f:
    print(f.read())
  print(f'Wrote {md_path}, {csv_path}' + (f', {figure}' if figure else ' (no periodic history for a figure)'))


if __name__ == '__main__':
  main()
