"""Which training timesteps a discrete sampler visits, and in what order."""

import numpy as np

TIMESTEP_SPACINGS = ('leading', 'trailing', 'linspace')


def make_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = 'leading') -> np.ndarray:
  """Descending int32 timesteps (num_steps,) in [0, T-1], spaced like diffusers' `set_timesteps`.

  `leading` (diffusers' default): k * (T // n), so it ends at 0 but starts below T-1 when n < T;
  `trailing`: starts at T-1 and ends near T/n - 1 (better for few steps); `linspace`: rounded
  linspace(0, T-1, n), covering both ends.
  """
  if spacing not in TIMESTEP_SPACINGS:
    raise ValueError(f'Unknown timestep_spacing {spacing!r}; use one of {TIMESTEP_SPACINGS}.')
  if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f'num_steps must be an int in [1, {num_train_timesteps}] (the schedule length), '
                     f'got {num_steps!r}.')
  if spacing == 'leading':
    steps = np.arange(num_steps) * (num_train_timesteps // num_steps)
  elif spacing == 'trailing':
    # Same values as diffusers' round(arange(T, 0, -T/n)) - 1, written so float error cannot add a step.
    steps = np.round(num_train_timesteps - np.arange(num_steps)[::-1] * (num_train_timesteps / num_steps)) - 1
    steps = steps[::-1]
  else:
    steps = np.round(np.linspace(0, num_train_timesteps - 1, num_steps))
  return np.sort(steps.astype(np.int32))[::-1].copy()


def previous_timesteps(timesteps: np.ndarray, end: int = -1) -> np.ndarray:
  """The timestep each step lands on (num_steps,): the next entry, and `end` (-1: alpha_bar = 1) after the last."""
  return np.append(timesteps[1:], end).astype(np.int32)
