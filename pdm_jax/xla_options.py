"""XLA compiler options for the big programs (train step, samplers), chosen by profiling the step on a CPU.

XLA:CPU's default YNNPACK fusions run the weight gradients of the 3x3 convolutions on 32x32 maps at ~30 GFLOP/s, a
third of the reference CIFAR-10 step. Restricting YNNPACK to reductions and single dots leaves convolutions to XLA's
Eigen kernels: the step runs 1.2-1.35x faster (README: Memory and speed). Nothing changes on other backends.
`PDM_JAX_XLA_TUNING=0` in the environment keeps XLA's defaults, e.g. to compare.
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp

_YNN_FUSION_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
_YNN_FUSIONS = 'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'


@functools.lru_cache(maxsize=None)
def compiler_options() -> dict[str, str] | None:
  """Options for jax.jit(compiler_options=...): the YNNPACK fusion choice on a CPU, else None.

  Probed once by compiling a tiny program, so a jaxlib without the option runs with XLA's defaults.
  """
  if os.environ.get('PDM_JAX_XLA_TUNING', '1') == '0' or jax.default_backend() != 'cpu':
    return None
  options = {_YNN_FUSION_OPTION: _YNN_FUSIONS}
  try:
    jax.jit(jnp.sin).lower(jnp.zeros(2)).compile(compiler_options=options)
  except Exception as e:  # pylint: disable=broad-except  (any rejection means: this jaxlib lacks the option)
    logging.warning('XLA:CPU rejected %s (%s); keeping its default fusions.', _YNN_FUSION_OPTION, str(e)[:200])
    return None
  return options
