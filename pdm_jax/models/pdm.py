"""The denoiser of every model type: a UNet, conditioned for PDM / s-PDM on one prototype token."""

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from pdm_jax.models import prototypes as prototypes_lib
from pdm_jax.models.unet import UNet2D

# ddpm: unconditional baseline; cddpm: class-conditional DDPM (class embedding added to the time embedding);
# pdm: nearest of K learned prototypes; spdm: one prototype per class, chosen by label.
MODEL_TYPES = ('ddpm', 'cddpm', 'pdm', 'spdm')
PROTOTYPE_MODELS = ('pdm', 'spdm')
CLASS_CONDITIONAL_MODELS = ('cddpm', 'spdm')


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

  def setup(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f'Unknown model.type={self.model_type!r}: use one of {", ".join(MODEL_TYPES)}.')
    self.unet = UNet2D(
        **self.unet_config,
        bottleneck_attention=self.model_type in PROTOTYPE_MODELS,
        num_class_embeds=self.num_prototypes if self.model_type == 'cddpm' else None,
        dtype=self.dtype)
    if self.model_type in PROTOTYPE_MODELS:
      self.memory = prototypes_lib.PrototypeMemory(self.num_prototypes, self.prototype_dim, self.dtype)

  def __call__(self, x_t: jax.Array, t: jax.Array, *, clean_images: Optional[jax.Array] = None,
               labels: Optional[jax.Array] = None, prototype_ids: Optional[jax.Array] = None,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x_t (B, H, W, C), t (B,) -> ((B, H, W, C) output, aux dict).

    Training passes clean_images (and labels for spdm / cddpm); sampling passes prototype_ids (pdm: the drawn
    prototype, spdm / cddpm: the class).
    """
    t = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
    if self.model_type == 'ddpm':
      return self.unet(x_t, t, train=train), {}
    if self.model_type == 'cddpm':
      classes = labels if labels is not None else prototype_ids
      if classes is None:
        raise ValueError('cddpm needs class labels: pass labels= (training) or prototype_ids= (sampling).')
      return self.unet(x_t, t, class_labels=classes, train=train), {}

    aux: dict[str, jax.Array] = {}
    if clean_images is not None:
      features = self.memory.encode(clean_images, train=train)
      bank = self.memory.all_prototypes()
      if self.model_type == 'pdm':
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
    elif self.model_type == 'spdm' and labels is not None:
      selected = labels
    else:
      raise ValueError(f'{self.model_type} needs clean_images (training) or prototype_ids (sampling).')
    token = self.memory(selected) + prototypes_lib.timestep_sinusoid(t, self.prototype_dim)
    return self.unet(x_t, t, context=token[:, None, :], train=train), aux
