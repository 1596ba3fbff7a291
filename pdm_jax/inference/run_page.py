"""<workdir>/samples/index.html: a run at a glance, its pictures and reports on one page that any browser opens.

Built from the files the run has written so far (samples/, eval/, inspect/, config.json), so every mode rewrites it
after its own output and it never shows a stale picture of a file that is gone.
"""

import html
import json
import os

import jax

PAGE = 'index.html'

# (section title, report JSON, pictures), paths relative to the workdir; sections with no file on disk are left out.
_SECTIONS = (
    ('Final samples', 'samples/final_report.json', ('samples/final.png',)),
    ('Evaluation', 'eval/metrics.json', ('eval/samples.png',)),
    ('Prototypes', 'inspect/report.json', ('inspect/features_pca.png', 'inspect/samples_per_prototype.png',
                                           'inspect/prototype_usage.png', 'inspect/prototype_similarity.png')),
)
_HISTORY = 'eval/periodic.jsonl'
_CONFIG_FIELDS = ('model.type', 'data.name', 'train.num_steps', 'train.batch_size', 'model.num_prototypes',
                  'model.prototype_assignment', 'sample.method', 'sample.num_steps', 'seed')


def _value(value) -> str:
  """A report entry as short text: floats to 4 significant digits, lists and dicts as compact JSON."""
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, (list, dict)):
    text = json.dumps(value, separators=(',', ':'))
    return text if len(text) <= 200 else text[:197] + '...'
  return str(value)


def _table(rows: list[tuple[str, str]]) -> str:
  cells = ''.join(f'<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>' for key, value in rows)
  return f'<table>{cells}</table>'


def _read_json(path: str):
  """The JSON object at path, or None if it is missing or unreadable (a page is never worth failing a run for)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _config_rows(workdir: str) -> list[tuple[str, str]]:
  config = _read_json(os.path.join(workdir, 'config.json')) or {}
  rows = []
  for field in _CONFIG_FIELDS:
    value = config
    for part in field.split('.'):
      value = value.get(part) if isinstance(value, dict) else None
    if value is not None:
      rows.append((field, _value(value)))
  return rows


def _history_table(path: str) -> str:
  """periodic.jsonl as one row per evaluation step and one column per metric."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:  # a line cut short by a crash
        continue
  if not records:
    return ''
  columns = ['step'] + sorted({key for record in records for key in record} - {'step'})
  head = ''.join(f'<th>{html.escape(column)}</th>' for column in columns)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(_value(record.get(column, "")))}</td>' for column in columns)
                 + '</tr>' for record in records)
  return f'<table class="history"><tr>{head}</tr>{body}</table>'


def render(workdir: str) -> str:
  """The page's HTML for workdir, pictures linked relative to samples/."""
  name = os.path.basename(os.path.normpath(workdir))
  parts = [f'<h1>{html.escape(name)}</h1>', _table(_config_rows(workdir))]
  for title, report_file, pictures in _SECTIONS:
    report = _read_json(os.path.join(workdir, report_file))
    present = [picture for picture in pictures if os.path.isfile(os.path.join(workdir, picture))]
    if report is None and not present:
      continue
    parts.append(f'<h2>{html.escape(title)}</h2>')
    parts.extend(f'<a href="../{picture}"><img src="../{picture}" alt="{html.escape(picture)}"></a>'
                 for picture in present)
    if isinstance(report, dict):
      parts.append(_table([(key, _value(value)) for key, value in report.items()]))
  history = os.path.join(workdir, _HISTORY)
  if os.path.isfile(history):
    parts.extend(['<h2>Periodic evaluations</h2>', _history_table(history)])
  style = ('body{font-family:sans-serif;margin:2em;max-width:80em} img{max-width:32em;margin:0.3em;'
           'image-rendering:pixelated;border:1px solid #ccc} table{border-collapse:collapse;margin:0.5em 0}'
           'th,td{border:1px solid #ddd;padding:0.2em 0.6em;text-align:left;font-size:90%}')
  return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(name)}</title>'
          f'<style>{style}</style></head><body>{"".join(parts)}</body></html>\n')


def write(workdir: str) -> str | None:
  """Writes <workdir>/samples/index.html (process 0); returns its path."""
  if jax.process_index() != 0:
    return None
  path = os.path.join(workdir, 'samples', PAGE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(render(workdir))
  return path
