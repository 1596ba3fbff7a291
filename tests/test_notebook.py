"""notebooks/quickstart.ipynb runs top to bottom (with fewer steps and samples) in a kernel of this interpreter."""

import json
import os
import sys

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.conftest import tiny_config

NOTEBOOK = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')
KERNEL_NAME = 'pdm-jax-test'


def small_parameters(workdir: str) -> dict:
  """The notebook's parameters cut to what a test can afford: few steps and samples, the tests' tiny UNet (its
  compilation is most of the run), a small batch."""
  tiny = tiny_config('spdm')
  unet = {f'model.{name}': tiny.model[name] for name in ('block_out_channels', 'down_block_types', 'up_block_types',
                                                          'norm_num_groups', 'prototype_dim')}
  return dict(NUM_STEPS=20, WORKDIR=workdir, SAMPLE_METHOD='ddim', SAMPLE_STEPS=4, SAMPLES_PER_CLASS=2,
              EVAL_SAMPLES=20, CONFIG_OVERRIDES=dict(unet, **{'train.batch_size': 32}))


def _kernel_of_this_interpreter(jupyter_dir) -> None:
  """A kernelspec running ipykernel with sys.executable, found first on JUPYTER_PATH: no user or system kernel
  (another Python, another venv) can stand in for it."""
  spec_dir = jupyter_dir / 'kernels' / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  spec = dict(argv=[sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
              display_name='pdm-jax test', language='python')
  (spec_dir / 'kernel.json').write_text(json.dumps(spec))


def _with_parameters(notebook, parameters: dict) -> None:
  """Inserts a cell setting `parameters` right after the cell tagged `parameters`, as papermill does."""
  tagged = [i for i, cell in enumerate(notebook.cells) if 'parameters' in cell.metadata.get('tags', [])]
  assert len(tagged) == 1, 'the notebook needs exactly one cell tagged "parameters"'
  source = '\n'.join(f'{name} = {value!r}' for name, value in parameters.items())
  notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={'tags': ['injected-parameters']}))


def _cell_after(notebook, text: str):
  """The first code cell whose source contains text."""
  return next(cell for cell in notebook.cells if cell.cell_type == 'code' and text in cell.source)


def _stdout(cell) -> str:
  """What the cell printed (stderr, e.g. library warnings, left out)."""
  return ''.join(output.text for output in cell.outputs if output.output_type == 'stream' and output.name == 'stdout')


def _has_image(cell) -> bool:
  return any('image/png' in output.get('data', {}) for output in cell.outputs)


def test_the_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'clear the outputs of:\n{cell.source[:200]}'


def test_the_notebook_runs(tmp_path, monkeypatch):
  _kernel_of_this_interpreter(tmp_path / 'jupyter')
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  # Connection files and the IPython profile in tmp_path: no user startup scripts, no writes to a read-only home.
  monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'jupyter' / 'runtime'))
  monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
  # The kernel imports pdm_jax and configs/ from this checkout, as a notebook opened in the repository does.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')  # figures as image/png outputs
  # Only that the notebook runs is checked here: an unoptimised LLVM build of its programs compiles in half the time.
  monkeypatch.setenv('XLA_FLAGS', f'{os.environ.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0'.strip())
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / 'workdir'
  parameters = small_parameters(str(workdir))
  _with_parameters(notebook, parameters)

  client = NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=300,
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

  install = _cell_after(notebook, 'import pdm_jax')
  assert _stdout(install).strip() == f'pdm_jax from {os.path.join(REPO, "pdm_jax")}'  # imported, nothing installed
  assert (workdir / 'checkpoints' / '20').is_dir()
  assert 'trained 20 steps' in _stdout(_cell_after(notebook, 'run.train_and_evaluate('))
  assert _has_image(_cell_after(notebook, 'EventAccumulator('))
  assert _has_image(_cell_after(notebook, 'model.sample('))
  assert (workdir / 'inspect' / 'features_pca.png').is_file()
  assert _has_image(_cell_after(notebook, 'run.inspect('))
  report = _stdout(_cell_after(notebook, 'run.evaluate(')).splitlines()
  assert 'accuracy' in report[0] and 'Frechet' in report[0]
  assert report[1].startswith('samples ') and report[2].startswith('real digits ')
  metrics = json.loads((workdir / 'eval' / 'metrics.json').read_text())
  assert metrics['step'] == 20 and metrics['num_samples'] == parameters['EVAL_SAMPLES']
