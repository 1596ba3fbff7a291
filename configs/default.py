"""Default configuration for pdm-jax; every experiment config imports this and overrides what differs.

Run: python main.py --config=configs/default.py --workdir=/tmp/pdm_default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the base config: s-PDM on the embedded digits set with a small UNet."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: 'pdm' (unsupervised prototypes), 'spdm' (one prototype per class), 'ddpm' (no conditioning), 'cddpm'
  # (class embedding) or 'protodiffusion' (class embedding of prototype_dim started from a prototype classifier).
  config.model = ml_collections.ConfigDict()
  config.model.type = 'spdm'
  config.model.block_out_channels = (16, 32, 32)
  config.model.layers_per_block = 1
  config.model.down_block_types = ('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D')
  config.model.up_block_types = ('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')
  config.model.attention_head_dim = 8
  config.model.norm_num_groups = 8
  config.model.dropout = 0.0
  config.model.bottleneck_num_heads = 8
  # Prototype memory (pdm / spdm). For spdm num_prototypes is the number of classes. protodiffusion: prototype_dim is
  # the width of its class embedding and of the prototype classifier's features.
  config.model.num_prototypes = 10
  config.model.prototype_dim = 64
  config.model.tau = 1.0
  config.model.alpha = 1.0
  config.model.beta = 1.0
  # PDM only: how each image's prototype is chosen at training. 'sinkhorn' balances the assignment over the batch (and
  # prototype_queue_size recent features: set it when the per-step batch is smaller than K); 'argmin' is the
  # reference's nearest prototype, which collapses onto one prototype (README "Prototypes").
  config.model.prototype_assignment = 'sinkhorn'
  config.model.sinkhorn_epsilon = 0.05
  config.model.sinkhorn_iters = 3
  config.model.prototype_queue_size = 0
  # The reference redraws a random prototype at every sampler step; we keep one per trajectory by default.
  config.model.redraw_prototype_each_step = False
  # Memory and speed (see README "Memory and speed"): compute dtype 'float32' | 'bfloat16' (parameters, optimizer
  # state, losses, norm statistics and softmax stay float32); attention 'auto' | 'xla' | 'cudnn' | 'cpu_fused' |
  # 'chunked' and its query chunk (None: sized to a 512 MiB logits budget); remat recomputes block activations in
  # the backward pass.
  config.model.dtype = 'float32'
  config.model.attention_impl = 'auto'
  config.model.attention_chunk_size = ml_collections.FieldReference(None, field_type=int)
  config.model.remat = False

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.num_timesteps = 1000
  config.diffusion.schedule = 'linear'
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.prediction_type = 'epsilon'
  config.diffusion.loss_weighting = 'uniform'  # or 'min_snr'
  config.diffusion.snr_gamma = 5.0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'digits'
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.split = 'train'
  config.data.random_flip = False
  config.data.use_labels = True
  config.data.shuffle_buffer = 10_000
  # Dataset-specific choices (see pdm_jax/data/datasets.py); None means the reference's default.
  config.data.attribute = ml_collections.FieldReference(None, field_type=str)  # CelebA label, default 'Male'
  # image_folder only: a flat folder (e.g. img_align_celeba) labelled by a CelebA attribute list such as
  # list_attr_celeba.txt; data.attribute (required then) gives class 0 where it holds (+1), 1 elsewhere (-1).
  config.data.attributes_file = ml_collections.FieldReference(None, field_type=str)
  config.data.examples_per_class = ml_collections.FieldReference(None, field_type=int)  # balanced subset; 0: all
  config.data.subset_seed = 0
  config.data.resize_mode = ml_collections.FieldReference(None, field_type=str)  # none / squash / center_crop

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128  # global, split over all devices
  config.train.grad_accum_steps = 1  # micro-batches per step (batch_size stays the effective batch): less memory
  config.train.num_steps = 2500
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 100
  config.train.end_learning_rate_factor = 0.05
  config.train.weight_decay = 0.0
  config.train.grad_clip_norm = 1.0
  config.train.ema_decay = 0.999
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3
  # A step with a non-finite loss or gradient: 'stop' the run there (nothing of it saved; a rerun resumes from the
  # last good checkpoint) or 'skip' its update and go on (counted as `skipped` in the metrics).
  config.train.on_nonfinite = 'stop'
  # Class-conditional models: the share of images trained with the null class, for classifier-free guidance
  # (sample.guidance_scale). 0: no null class (the reference).
  config.train.label_dropout = 0.0

  # ProtoDiffusion (model.type='protodiffusion') only. mode: 'regular' (random class embedding, no stage 1) |
  # 'proto_frozen' (the prototype classifier's centres, never updated) | 'proto_unfrozen' (the centres, then trained).
  # Stage 1 trains that classifier (pdm_jax/training/prototype_classifier.py) for classifier_steps Adam steps of
  # train.batch_size images: distance-based cross-entropy with logits -gamma * squared distance, plus pull_weight
  # times the squared distance to the image's own centre.
  config.protodiffusion = ml_collections.ConfigDict()
  config.protodiffusion.mode = 'proto_frozen'
  config.protodiffusion.classifier_steps = 500
  config.protodiffusion.classifier_learning_rate = 1e-3
  config.protodiffusion.gamma = 1.0
  config.protodiffusion.pull_weight = 0.01

  config.sample = ml_collections.ConfigDict()
  config.sample.num_samples = 200
  config.sample.batch_size = 200
  config.sample.method = 'ddpm'
  config.sample.num_steps = ml_collections.FieldReference(None, field_type=int)  # None: all T steps
  config.sample.label = ml_collections.FieldReference(None, field_type=int)  # None: balanced classes
  config.sample.prototype = ml_collections.FieldReference(None, field_type=int)  # PDM; None: a random one per sample
  config.sample.use_ema = True
  # Classifier-free guidance: eps_null + w (eps_class - eps_null); 1 is the plain conditional model. Needs a model
  # trained with train.label_dropout > 0.
  config.sample.guidance_scale = 1.0

  # Evaluation (--mode=eval, and periodic during training): FID / KID / IS with the FID Inception network, plus the
  # digits classifier's report on digits. Inception on 8x8 digits means little (and needs the weights file):
  # digits runs usually pass --config.eval.inception=False.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 1000  # generated by --mode=eval (papers quote 50,000)
  config.eval.num_real = 50_000  # real images (at most) behind the cached reference statistics; digits has 1,797
  config.eval.every_steps = 0  # periodic evaluation during training; 0: never
  config.eval.periodic_num_samples = 200
  config.eval.inception = True
  # Path of pytorch-fid's pt_inception-2015-12-05 .pth; None: the cache (~/.cache/pdm_jax/inception), downloaded.
  config.eval.inception_weights = ml_collections.FieldReference(None, field_type=str)
  config.eval.batch_size = 50  # Inception batch (generation batches are sample.batch_size)

  # --mode=inspect (pdm / spdm): pictures of the prototype memory in <workdir>/inspect/. Samples use sample.method,
  # sample.num_steps and sample.batch_size; the features cover the first eval.num_real images of the dataset.
  config.inspect = ml_collections.ConfigDict()
  config.inspect.max_rows = 20  # prototypes sampled, spread over all K when K is larger
  config.inspect.samples_per_prototype = 10
  return config
