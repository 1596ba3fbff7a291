"""Joining a run of several processes (hosts, or processes on one machine) before anything touches a device."""

import itertools
import signal

import jax
import orbax.checkpoint as ocp


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """jax.distributed.initialize with cluster auto-detection (SLURM, Open MPI) or the given coordinates.

  A ValueError naming the fix for coordinates that cannot describe a run.
  """
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be at least 1.')
  if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
    raise ValueError(f'--process_id={process_id} must lie in [0, --num_processes={num_processes}).')
  # Collectives between processes on CPUs (the local launcher, tests) go through gloo.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  # initialize() installs a C++ SIGTERM handler that only records the signal, so the process would outlive a
  # preemption it never acts on. The training loop handles SIGTERM itself (processes agree on the step to stop at);
  # everywhere else SIGTERM stops the process, as in a single-process run.
  signal.signal(signal.SIGTERM, signal.SIG_DFL)



# Seconds a process waits at a barrier for the slowest one: a big program can take many minutes to compile.
_BARRIER_TIMEOUT_SECONDS = 3600
_barriers = itertools.count()


def compile_together(jitted, *args, what: str):
  """With several processes: jitted.lower(*args).compile(), then a wait until every process has compiled it too;
  returns the executable. With one process: `jitted` itself, compiled on its first call as usual.

  On CPUs the processes' first collective must begin within 30 s of each other (gloo's fixed timeout), but one
  process may load the program from the compilation cache while another compiles it for minutes. A host-side
  barrier (no device collective) after compiling keeps them together.
  """
  if jax.process_count() == 1:
    return jitted
  compiled = jitted.lower(*args).compile()
  ocp.multihost.sync_global_processes(f'pdm_jax_compiled_{what}_{next(_barriers)}', timeout=_BARRIER_TIMEOUT_SECONDS)
  return compiled
