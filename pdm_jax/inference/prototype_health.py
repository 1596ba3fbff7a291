"""Prototype health on the whole dataset: how f_phi sorts the real images among the K prototypes.

A collapsed memory conditions every image on one prototype, so PDM becomes an unconditional model with a constant
token. The batch statistics of training (prototypes_used) can hide it; these are counted over the data, with the
nearest prototype (the assignment a trained model gives a new image).
"""

import jax
import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from pdm_jax import data

# A prototype is in use when it holds at least this share of the dataset's images.
IN_USE_SHARE = 0.01
_BATCH = 256


def health(assignments: np.ndarray, num_prototypes: int, labels: np.ndarray | None = None) -> dict[str, float]:
  """Usage statistics of (N,) prototype ids: prototypes holding >= 1% of the images, the usage entropy (nats; log K
  when uniform), and the NMI between prototype and class when (N,) labels are given."""
  assignments = np.asarray(assignments)
  counts = np.bincount(assignments, minlength=num_prototypes)
  shares = counts / max(len(assignments), 1)
  nonzero = shares[shares > 0]
  result = dict(prototypes_in_use=int(np.sum(shares >= IN_USE_SHARE)),
                prototype_usage_entropy=float(-np.sum(nonzero * np.log(nonzero))),
                prototype_usage_entropy_max=float(np.log(num_prototypes)),
                num_images=int(len(assignments)))
  if labels is not None:
    result['prototype_class_nmi'] = float(sk_metrics.normalized_mutual_info_score(labels, assignments))
  return result


def _labelled(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data config with labels switched on where the data has them (PDM trains without; the NMI needs them)."""
  config = ml_collections.ConfigDict(data_config.to_dict())
  config.use_labels = True
  try:
    if data.describe(config).num_classes is None:
      config.use_labels = False
  except ValueError:
    config.use_labels = False
  return config


def dataset_assignments(model, variables: dict, config: ml_collections.ConfigDict
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """((N, D) features, (N,) nearest prototype, (N,) labels or None) for the first eval.num_real images of the
  configured split, in one ordered pass (every host computes the whole pass, as for the FID statistics)."""
  data_config = _labelled(config.data)
  batch_size = _BATCH
  if config.data.name == 'digits':
    # The digits pass yields whole batches only: one batch of the (tiny) set keeps every image.
    batch_size = data.build(data_config, global_batch_size=1, seed=config.seed, train=False)[0].num_examples
  _, batches = data.build(data_config, global_batch_size=batch_size, seed=config.seed, train=False)
  nearest_fn = jax.jit(lambda v, images: model.apply(v, images, method=model.nearest_prototypes))
  features, ids, labels = [], [], []
  remaining = int(config.eval.num_real)
  for batch in batches:
    if remaining <= 0:
      break
    f, n = jax.device_get(nearest_fn(variables, batch['image']))
    take = min(remaining, len(n))
    features.append(f[:take])
    ids.append(n[:take])
    if 'label' in batch:
      labels.append(batch['label'][:take])
    remaining -= take
  if not ids:
    raise ValueError(f'data.name={config.data.name!r} gave no images for the prototype health pass: check the data '
                     'and eval.num_real.')
  return np.concatenate(features), np.concatenate(ids), np.concatenate(labels) if labels else None


def dataset_health(model, variables: dict, config: ml_collections.ConfigDict) -> dict[str, float]:
  """health() of the prototypes f_phi assigns the dataset's images to (see dataset_assignments)."""
  _, ids, labels = dataset_assignments(model, variables, config)
  return health(ids, model.num_prototypes, labels)
