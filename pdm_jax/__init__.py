"""pdm-jax: Prototype Diffusion Models (PDM, s-PDM) and their baselines in JAX / Flax."""

import os

# XLA:CPU expands remat's optimization barriers before CSE, which then merges the recomputation back into the
# forward pass: model.remat would save no memory on a CPU (and the CPU memory report would not show it). Keeping
# the barriers, as the GPU pipeline does, costs nothing elsewhere. XLA reads the flag when the backend starts.
_KEEP_REMAT = '--xla_disable_hlo_passes=cse_barrier_expander'
if 'cse_barrier_expander' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_KEEP_REMAT}'.strip()


def __getattr__(name: str):
  """pdm_jax.load (the Python API, pdm_jax/api.py), imported on first use: `import pdm_jax.sampling` stays light."""
  if name == 'load':
    from pdm_jax.api import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f'module pdm_jax has no attribute {name!r}')
