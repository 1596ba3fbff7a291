"""samples/index.html: the run's pictures and reports on one page, built from what is on disk."""

import json
import os

from pdm_jax.inference import run_page


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def test_page_shows_the_runs_pictures_reports_and_history(tmp_path):
  workdir = str(tmp_path / 'digits_pdm')
  _write(os.path.join(workdir, 'config.json'), json.dumps({'model': {'type': 'pdm', 'num_prototypes': 10},
                                                          'data': {'name': 'digits'}, 'seed': 3}))
  _write(os.path.join(workdir, 'samples', 'final.png'), 'png')
  _write(os.path.join(workdir, 'samples', 'final_report.json'),
         json.dumps({'frechet_distance': 0.123456, 'class_counts': [1, 2], 'note': '<b>'}))
  _write(os.path.join(workdir, 'inspect', 'features_pca.png'), 'png')
  _write(os.path.join(workdir, 'eval', 'periodic.jsonl'),
         json.dumps({'step': 500, 'fid': 9.5}) + '\n' + json.dumps({'step': 1000, 'fid': 7.25}) + '\n{"step": 15')
  page = open(run_page.write(workdir)).read()
  assert page.startswith('<!DOCTYPE html>') and '<h1>digits_pdm</h1>' in page
  assert 'src="../samples/final.png"' in page and 'src="../inspect/features_pca.png"' in page
  # Pictures the run has not written are not linked; the evaluation section has no file, so it is left out.
  assert 'prototype_usage.png' not in page and '<h2>Evaluation</h2>' not in page
  assert '<td>0.1235</td>' in page and '[1,2]' in page and '&lt;b&gt;' in page  # escaped, not markup
  assert '<th>model.type</th><td>pdm</td>' in page and '<th>seed</th><td>3</td>' in page
  # One row per periodic evaluation; the line cut short by a crash is skipped.
  assert '<td>500</td><td>9.5</td>' in page and '<td>1000</td><td>7.25</td>' in page


def test_page_of_an_empty_workdir_still_renders(tmp_path):
  page = run_page.render(str(tmp_path))
  assert '<h2>' not in page and page.rstrip().endswith('</html>')
