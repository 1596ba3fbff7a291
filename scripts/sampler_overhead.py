"""Per-step cost of the compiled samplers against the bare compiled network, for the same number of calls.

The bare baseline feeds the network its own output num_evaluations times inside one lax.fori_loop, so
it has the same data dependence and loop structure, minus the sampler's arithmetic. As the difference
of two noisy timings is itself noisy on a shared machine, the script also times the sampler with a
near-free eps_fn (0.1 x): that is the loop's own cost, reported relative to the bare network. Uses
pdm_jax.models.unet.UNet2D when importable, else a small flax conv net. Best-of-N timings, interleaved,
because other processes may share the machine. Prints one JSON line per method.

Run: python scripts/sampler_overhead.py [--methods ddpm,ddim,s-pndm,f-pndm,fon,pf] [--num_steps 20]
     [--batch 4] [--resolution 16] [--repeats 5]
"""

import argparse
import json
import time

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run without installing

from pdm_jax import diffusion
from pdm_jax import sampling


class SmallConvNet(nn.Module):
  """Fallback noise predictor: a few convolutions with a timestep bias, NHWC in and out."""
  channels: int = 64

  @nn.compact
  def __call__(self, x, t):
    h = nn.Conv(self.channels, (3, 3))(x)
    h = h + nn.Dense(self.channels)(jnp.sin(t.astype(jnp.float32)[:, None] / 100.0))[:, None, None, :]
    for _ in range(3):
      h = h + nn.Conv(self.channels, (3, 3))(nn.silu(h))
    return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def build_network(batch, resolution):
  """(apply(variables, x, t), variables, name) for a small UNet2D, or the fallback conv net."""
  x = jnp.zeros((batch, resolution, resolution, 3))
  t = jnp.zeros((batch,), jnp.int32)
  try:
    from pdm_jax.models.unet import UNet2D  # pylint: disable=g-import-not-at-top
    model = UNet2D(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                   up_block_types=('AttnUpBlock2D', 'UpBlock2D'))
    name = 'UNet2D(32,64; attn at 2nd level)'
  except ImportError:
    model, name = SmallConvNet(), 'SmallConvNet (UNet2D not importable)'
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, t)
  return model.apply, variables, name


def best_time(fn, *args, repeats):
  """Minimum wall time over `repeats` calls of an already compiled fn."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--methods', default='ddpm,ddim,s-pndm,f-pndm,fon,pf')
  parser.add_argument('--num_steps', type=int, default=20)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--resolution', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  apply_fn, variables, net_name = build_network(args.batch, args.resolution)
  schedule = diffusion.make_schedule('linear', 1000)
  shape = (args.batch, args.resolution, args.resolution, 3)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)

  @jax.jit
  def bare(variables, x, num_calls):
    t = jnp.zeros((shape[0],), jnp.int32)
    # A dynamic trip count so one compilation serves every method's NFE.
    return lax.fori_loop(0, num_calls, lambda i, y: apply_fn(variables, y, t + i).astype(y.dtype), x)

  for method in args.methods.split(','):
    run = jax.jit(lambda variables, rng, method=method: sampling.sample(
        lambda x_t, t: apply_fn(variables, x_t, t), schedule, shape, rng, method=method,
        num_steps=args.num_steps, timestep_spacing='trailing', return_nfe=True))
    rng = jax.random.PRNGKey(2)
    _, nfe = jax.block_until_ready(run(variables, rng))  # Compile.
    nfe = int(nfe)
    jax.block_until_ready(bare(variables, x, nfe))
    loop_only = jax.jit(lambda rng, method=method: sampling.sample(
        lambda x_t, t: 0.1 * x_t, schedule, shape, rng, method=method, num_steps=args.num_steps,
        timestep_spacing='trailing', return_nfe=True))
    loop_nfe = int(jax.block_until_ready(loop_only(rng))[1])
    sampler_s, bare_s = float('inf'), float('inf')
    for _ in range(args.repeats):  # Interleave so both see the same machine load.
      sampler_s = min(sampler_s, best_time(run, variables, rng, repeats=1))
      bare_s = min(bare_s, best_time(bare, variables, x, nfe, repeats=1))
    loop_s = best_time(loop_only, rng, repeats=3 * args.repeats)
    print(json.dumps({
        'network': net_name, 'method': method, 'num_steps': args.num_steps, 'nfe': nfe,
        'batch': args.batch, 'resolution': args.resolution, 'backend': jax.default_backend(),
        'sampler_ms_per_eval': round(1e3 * sampler_s / nfe, 3), 'bare_ms_per_eval': round(1e3 * bare_s / nfe, 3),
        'overhead_pct': round(100.0 * (sampler_s - bare_s) / bare_s, 2),
        'loop_only_ms_per_eval': round(1e3 * loop_s / loop_nfe, 4),
        'loop_only_pct_of_bare': round(100.0 * (loop_s / loop_nfe) / (bare_s / nfe), 2)}), flush=True)


if __name__ == '__main__':
  main()
