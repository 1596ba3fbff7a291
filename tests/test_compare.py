"""scripts/compare.py: the methods trained with one budget, evaluated alike, and tabulated."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'scripts'))
import compare  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _fake_workdir(root, method, metrics, history, report=None):
  os.makedirs(os.path.join(root, method, 'eval'))
  with open(os.path.join(root, method, 'eval', 'metrics.json'), 'w') as f:
    json.dump(dict(metrics, method='ddim', num_steps=50, num_samples=100), f)
  with open(os.path.join(root, method, 'eval', 'periodic.jsonl'), 'w') as f:
    f.writelines(json.dumps(h) + '\n' for h in history)
  if report is not None:
    os.makedirs(os.path.join(root, method, 'samples'))
    with open(os.path.join(root, method, 'samples', 'final_report.json'), 'w') as f:
      json.dump(report, f)


def test_collect_only_tabulates_existing_workdirs(tmp_path):
  _fake_workdir(tmp_path, 'ddpm', dict(step=100, digits_frechet_distance=3.25, digits_num_classes_present=10),
                [dict(step=50, digits_frechet_distance=9.0), dict(step=100, digits_frechet_distance=3.25)])
  _fake_workdir(tmp_path, 'pdm', dict(step=100, digits_frechet_distance=2.5, digits_num_classes_present=9),
                [dict(step=50, digits_frechet_distance=7.0)],
                report=dict(prototypes_in_use=8, prototype_class_nmi=0.71))
  compare.main(['--dataset=digits', '--methods=ddpm,pdm', f'--out={tmp_path}', '--collect_only'])
  with open(tmp_path / 'compare.md') as f:
    table = f.read().splitlines()
  assert table[0] == ('| method | steps | Frechet dist. (classifier) | classes present | prototypes in use | '
                      'prototype/class NMI | samples |')
  assert table[2] == '| ddpm | 100 | 3.25 | 10 | - | - | 100 |'
  assert table[3] == '| pdm | 100 | 2.50 | 9 | 8 | 0.71 | 100 |'
  assert 'ddim with 50 steps, 100 samples' in table[-1]
  with open(tmp_path / 'compare.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == ['ddpm', 'pdm'] and rows[1]['prototypes_in_use'] == '8'
  assert os.path.getsize(tmp_path / 'compare.png') > 0


def test_collect_only_names_a_missing_method(tmp_path):
  with pytest.raises(SystemExit, match=r'error: .*ddpm/eval/metrics.json is missing: run this script without '
                                       r'--collect_only'):
    compare.main(['--methods=ddpm', f'--out={tmp_path}', '--collect_only'])


def test_unknown_method_and_stray_arguments_are_refused(tmp_path):
  for bad in (['--methods=ddpm,vae'], ['--num_step=3']):
    with pytest.raises(SystemExit):
      compare.parse_args([f'--out={tmp_path}', *bad])


def test_trains_evaluates_and_resumes_a_method(tmp_path):
  # One real method (pdm: the prototype columns too); test_collect_only_tabulates_existing_workdirs covers several.
  out = tmp_path / 'cmp'
  command = [sys.executable, os.path.join(REPO, 'scripts', 'compare.py'), '--methods=pdm', f'--out={out}',
             '--config_template=tests/tiny_cli_config.py:{method}', '--num_steps=4', '--eval_every=2',
             '--eval_samples=10', '--periodic_samples=10', '--sample_steps=2']
  result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.load(open(out / 'pdm' / 'eval' / 'metrics.json'))
  assert metrics['step'] == 4 and metrics['num_samples'] == 10 and metrics['method'] == 'ddim'
  assert metrics['num_steps'] == 2
  steps = [json.loads(line)['step'] for line in open(out / 'pdm' / 'eval' / 'periodic.jsonl')]
  assert steps == [2, 4]
  rows = list(csv.DictReader(open(out / 'compare.csv')))
  assert [r['method'] for r in rows] == ['pdm'] and 1 <= int(rows[0]['prototypes_in_use']) <= 10
  # Rerunning trains nothing: every method's outputs exist.
  again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and '+ ' not in again.stdout, again.stdout[-2000:]
