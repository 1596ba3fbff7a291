"""pdm-jax: Prototype Diffusion Models (PDM, s-PDM) and their baselines in JAX / Flax."""

import os

# XLA:CPU expands remat's optimization barriers before CSE, which then merges the recomputation back into the
# forward pass: model.remat would save no memory on a CPU (and the CPU memory report would not show it). Keeping
# the barriers, as the GPU pipeline does, costs nothing elsewhere. XLA reads the flag when the backend starts.
_KEEP_REMAT = '--xla_disable_hlo_passes=cse_barrier_expander'
if 'cse_barrier_expander' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_KEEP_REMAT}'.strip()
