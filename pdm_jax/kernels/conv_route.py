"""Whether the model's convolutions may use the C++ kernels (winograd_cpu, conv_weight_grad_cpu) or must keep
XLA's own convolutions: `PDM_JAX_CPU_CONV_KERNEL=0` in the environment, e.g. to compare, or tracing inside
`xla_route()`, for XLA's FLOP counts (its cost analysis cannot see into a kernel) and for memory analyses that stand
for a GPU compile."""

import contextlib
import os

import jax

_xla_route_depth = [0]  # > 0 inside xla_route()


@contextlib.contextmanager
def xla_route():
  """Programs traced inside keep XLA's convolutions."""
  _xla_route_depth[0] += 1
  try:
    yield
  finally:
    _xla_route_depth[0] -= 1


def kernels_wanted() -> bool:
  """True on one CPU device unless PDM_JAX_CPU_CONV_KERNEL=0 or inside xla_route(); the kernels' own `usable`
  checks the shapes and dtypes. One device only: with several, XLA would gather a sharded batch to call a kernel."""
  return (os.environ.get('PDM_JAX_CPU_CONV_KERNEL', '1') != '0' and not _xla_route_depth[0]
          and jax.default_backend() == 'cpu' and jax.device_count() == 1)
