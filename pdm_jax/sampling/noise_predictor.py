"""The eps_fn(x_t, t) contract every sampler relies on, and wrappers that build one from others."""

from typing import Callable

import jax.numpy as jnp

EpsFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def evaluate(eps_fn: EpsFn, x: jnp.ndarray, t) -> jnp.ndarray:
  """Calls eps_fn on x (N, H, W, C) with the scalar timestep t repeated to shape (N,); checks the output shape."""
  t = jnp.asarray(t)
  eps = eps_fn(x, jnp.full((x.shape[0],), t, t.dtype))
  if eps.shape != x.shape:
    raise ValueError(f'eps_fn returned shape {eps.shape} for input {x.shape}; it must predict noise of the input '
                     'shape (split off learned-variance channels first).')
  return eps.astype(x.dtype)


def classifier_free_guidance(eps_cond_fn: EpsFn, eps_uncond_fn: EpsFn, guidance_scale) -> EpsFn:
  """eps_fn mixing two predictors: uncond + w (cond - uncond) (Ho & Salimans 2022); w = 1 is the conditional model."""
  if not callable(eps_cond_fn) or not callable(eps_uncond_fn):
    raise ValueError('classifier_free_guidance needs two callables eps(x_t, t) -> noise.')

  def guided(x_t, t):
    eps_uncond = eps_uncond_fn(x_t, t)
    return eps_uncond + guidance_scale * (eps_cond_fn(x_t, t) - eps_uncond)

  return guided
