"""The denoiser of every model kind (models/kinds.py): a UNet, conditioned for PDM / s-PDM on one prototype token."""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.models import kinds
from pdm_jax.models import prototypes as prototypes_lib
from pdm_jax.models.unet import UNet2D


class DiffusionModel(nn.Module):
  """(x_t, t) -> (network output, aux): aux holds the prototype loss terms when clean images are given."""
  model_type: str
  unet_config: Mapping[str, Any]
  num_prototypes: int = 0
  prototype_dim: int = 0
  tau: float = 1.0
  alpha: float = 1.0
  beta: float = 1.0
  dtype: Any = jnp.float32  # compute dtype of the UNet and f_phi; parameters, losses and outputs stay float32

  @property
  def kind(self) -> kinds.ModelKind:
    """The declaration of this model's kind: conditioning, loss terms, sampling conditions."""
    return kinds.get(self.model_type)

  @nn.nowrap
  def make_unet(self) -> UNet2D:
    """The UNet this kind conditions (setup's, and an unbound copy for exporters that need its settings)."""
    kind = self.kind
    return UNet2D(
        **self.unet_config,
        bottleneck_attention=kind.prototype_memory,
        # Label conditioning without a prototype memory is a class embedding added to the time embedding.
        num_class_embeds=self.num_prototypes if kind.class_conditional and not kind.prototype_memory else None,
        dtype=self.dtype)

  def setup(self):
    kind = self.kind
    self.unet = self.make_unet()
    if kind.prototype_memory:
      self.memory = prototypes_lib.PrototypeMemory(self.num_prototypes, self.prototype_dim, self.dtype)

  def __call__(self, x_t: jax.Array, t: jax.Array, *, clean_images: jax.Array | None = None,
               labels: jax.Array | None = None, prototype_ids: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x_t (B, H, W, C), t (B,) -> ((B, H, W, C) output, aux dict).

    Training passes clean_images (and labels for spdm / cddpm); sampling passes prototype_ids (pdm: the drawn
    prototype, spdm / cddpm: the class).
    """
    t = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
    kind = self.kind
    if not kind.conditional:
      return self.unet(x_t, t, train=train), {}
    if not kind.prototype_memory:
      classes = labels if labels is not None else prototype_ids
      if classes is None:
        raise ValueError(f'{kind.name} needs class labels: pass labels= (training) or prototype_ids= (sampling).')
      return self.unet(x_t, t, class_labels=classes, train=train), {}

    aux: dict[str, jax.Array] = {}
    if clean_images is not None:
      features = self.memory.encode(clean_images, train=train)
      bank = self.memory.all_prototypes()
      if not kind.class_conditional:
        # The selection is an argmin: the encoder learns only through the prototype losses, as in the reference.
        selected = jnp.argmin(prototypes_lib.euclidean_distances(features, bank), axis=-1)
        beta = self.beta
      else:
        if labels is None:
          raise ValueError('s-PDM needs labels with the clean images: use data with labels or model.type=pdm.')
        selected, beta = labels, 0.0
      aux = prototypes_lib.prototype_losses(features, bank, selected, tau=self.tau, alpha=self.alpha, beta=beta)
      aux['selected_prototype'] = selected
    elif prototype_ids is not None:
      selected = prototype_ids
    elif kind.class_conditional and labels is not None:
      selected = labels
    else:
      raise ValueError(f'{kind.name} needs clean_images (training) or prototype_ids (sampling).')
    token = self.memory(selected) + prototypes_lib.timestep_sinusoid(t, self.prototype_dim)
    return self.unet(x_t, t, context=token[:, None, :], train=train), aux
