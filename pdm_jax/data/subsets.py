"""Class-balanced subsets of a labelled split, as the reference trains on (CelebA, Tiny ImageNet)."""

import numpy as np


def balanced_subset(labels: np.ndarray, num_classes: int, examples_per_class: int, seed: int,
                    split: str = 'split') -> np.ndarray:
  """Sorted indices into labels (N,) of examples_per_class examples of each class, drawn without replacement."""
  rng = np.random.default_rng(seed)
  chosen = []
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    if len(members) < examples_per_class:
      raise ValueError(f'class {label} has {len(members)} examples in {split}, fewer than '
                       f'data.examples_per_class={examples_per_class}: lower it, or set 0 for the whole split.')
    chosen.append(rng.choice(members, examples_per_class, replace=False))
  return np.sort(np.concatenate(chosen))
