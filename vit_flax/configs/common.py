"""Defaults shared by every config; field names follow vit_jax's common.py."""

import ml_collections
from ml_collections.config_dict import placeholder


def _any_type(value) -> ml_collections.FieldReference:
  """A field that takes a value of any type (a bool one refuses 'auto')."""
  return ml_collections.FieldReference(value, field_type=object)


def get_config() -> ml_collections.ConfigDict:
  """Everything but the model; configs override what they need."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'cifar10'  # TFDS name, or a folder {train,test}/<class>/<img>.
  config.tfds_data_dir = placeholder(str)  # TFDS data directory (None: default).
  config.tfds_manual_dir = placeholder(str)  # Hand-downloaded files (and IDX).
  config.pp = ml_collections.ConfigDict()
  config.pp.train = 'train'  # Training split; TFDS slicing like 'train[:98%]'.
  config.pp.test = 'test'  # Evaluation split, evaluated whole, exactly once.
  config.pp.crop = 224  # Image size for evaluation (and training by default).
  config.pp.augment = 'auto'  # auto|inception_crop_flip|pad_crop_flip|pad_crop|flip|none.
  config.pp.curriculum = ()  # ((start, size), ...) train-size phases; () = crop.
  config.pp.curriculum_unit = 'steps'  # Unit of curriculum starts: steps|epochs.
  config.pp.randaugment = ()  # (num_ops, magnitude), e.g. (2, 9); () = off.
  config.pp.trivial_augment = False  # TrivialAugment-wide (not with the above).
  config.pp.augment_fill = 128  # Pixel value geometric augmentations fill in.
  config.pp.random_erase = 0.0  # Probability of random erasing (train only).
  config.pp.eval_crop_fraction = 1.0  # < 1: resize to crop/fraction, centre crop.
  config.pp.autotune = False  # tf.data autotuner (its end-of-iterator stalls: data/pipeline.py).
  config.shuffle_buffer = 50_000  # Examples in the shuffle buffer.
  config.prefetch = 2  # Batches transferred to the devices ahead of use.
  # The train and eval splits as uint8 on the devices, placed once
  # (replicated when small, else sharded over the data axis), each batch
  # gathered and augmented in the train step (vit_flax/data/device.py): no
  # host pipeline, no TensorFlow. Devices do every pp.augment,
  # pp.random_erase, curricula and mixup/CutMix, not RandAugment or
  # TrivialAugment. 'auto': on when they need neither and the splits take
  # <= 25% of a device's memory.
  config.data_on_device = _any_type(False)  # Data set on the devices: False|True|'auto'.

  # Model.
  config.model_type = 'vit'  # Key of vit_flax.model_configs.MODEL_TYPES.
  config.model = None  # A preset from vit_flax.model_configs, then overrides.
  config.pretrained_path = placeholder(str)  # Weights to fine-tune from: official .npz (gs:// ok), timm .safetensors/.pth, or a Hugging Face folder.

  # Optimisation.
  config.optimizer = 'sgd'  # sgd (momentum) | adam | adamw | muon.
  config.base_lr = 0.03  # Peak learning rate, reached after the warm-up.
  config.decay_type = 'cosine'  # After warm-up: cosine | linear | constant.
  config.warmup_steps = 500  # Linear warm-up from 0 over this many steps.
  config.total_steps = 10_000  # Training steps (optimizer updates).
  config.batch = 512  # Global training batch (all devices, all processes).
  config.batch_eval = 512  # Global evaluation batch.
  config.accum_steps = 1  # Split each batch into this many sequential chunks.
  config.mesh_fsdp = 1  # Devices each large param/opt tensor is split over.
  config.grad_norm_clip = 1.0  # Clip gradients to this global norm (0: off).
  config.optim_dtype = 'bfloat16'  # Momentum / first-moment dtype (as vit_jax).
  config.momentum = 0.9  # SGD momentum.
  config.b1 = 0.9  # Adam beta1.
  config.b2 = 0.999  # Adam beta2.
  config.weight_decay = 0.0  # Adam(W) weight decay on kernels only.
  # optimizer='muon': Muon (optax.contrib) on the hidden matrices (Dense,
  # attention and conv kernels; optim.muon_labels lists them), AdamW with
  # b1, b2 and weight_decay on the rest (embeddings, norms, biases, heads).
  # Both follow base_lr's schedule, decay kernels by weight_decay (decoupled)
  # and keep their momentum in optim_dtype.
  config.muon = ml_collections.ConfigDict()
  config.muon.beta = 0.95  # Muon's momentum (Keller Jordan's 0.95).
  config.muon.nesterov = True  # Nesterov momentum, as Muon's reference.
  config.muon.ns_steps = 5  # Newton-Schulz iterations orthogonalising it.
  # The RMS of Muon's update per unit of learning rate, set to AdamW's
  # typical 0.2 (arXiv 2502.16982) so that one base_lr and weight_decay serve
  # both halves (Keller Jordan's scaling instead wants a learning rate of its
  # own, 0.02 in his recipe).
  config.muon.consistent_rms = 0.2
  # Conv kernels (kh, kw, in, out) as (kh * kw * in, out) matrices, as the
  # CIFAR-10 speedruns do (False: AdamW); patch embeddings, stems and
  # depthwise convs stay on AdamW either way.
  config.muon.conv_kernels = True
  config.label_smoothing = 0.0  # Label smoothing of the training targets.
  # Mixup / CutMix (timm's Mixup, on the device in the train step).
  config.mixup = 0.0  # Mixup's Beta alpha, e.g. 0.8 (0: off).
  config.cutmix = 0.0  # CutMix's Beta alpha, e.g. 1.0 (0: off).
  config.mix_prob = 1.0  # Probability of mixing a batch (example in 'elem').
  config.mix_switch_prob = 0.5  # CutMix instead of mixup, when both are on.
  config.mix_mode = 'batch'  # batch: one draw per batch | elem: per example.
  # Exponential moving average of the params (timm's ModelEmaV3).
  config.ema_decay = 0.0  # e.g. 0.999 (0: off); evaluated beside the params.
  config.ema_warmup_power = 0.75  # Warm-up: decay 1 - (1 + step)^-power; 0: off.

  # Distillation from a frozen teacher (DeiT; see vit_flax/distill.py).
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = placeholder(str)  # A run's workdir or an .npz.
  config.distill.teacher_config = placeholder(str)  # For an .npz: config/preset.
  config.distill.teacher_checkpoint = 'best'  # Of a workdir: best | latest.
  config.distill.type = 'hard'  # hard (teacher's argmax) | soft (KL at T).
  config.distill.alpha = 0.5  # Weight of the distillation loss.
  config.distill.temperature = 1.0  # Of soft distillation.

  # Loop.
  config.eval_every = 1000  # Evaluate every so many steps (and at the end).
  config.progress_every = 100  # Log and write train metrics this often.
  config.eval_figures = True  # Attention maps etc. to TensorBoard per eval.
  config.checkpoint_every = 1000  # Checkpoint every so many steps (0: off).
  config.checkpoint_every_minutes = 10.0  # Also checkpoint this often (0: off).
  config.keep_checkpoints = 3  # Latest checkpoints kept (plus the best).
  config.seed = 0  # Seed of init, dropout, shuffling and augmentation.
  config.profile = False  # Write a profiler trace of a few steps to workdir.
  return config


def fashion_mnist_training() -> ml_collections.ConfigDict:
  """Data, augmentation, optimizer and schedule of the Fashion-MNIST configs
  (the CNN baseline, the staged ViTs, CCT, the hybrid, the studies' ViT
  baseline): the recipe the first quickstart ViT was tuned with
  (docs/experiments.md), kept here so that these configs stay as measured
  when the quickstart moves on. The model is left to the config."""
  config = get_config()
  config.dataset = 'fashion_mnist'  # Offline from Debian's IDX files.
  config.pp.crop = 28  # Native size.
  # Mirrored clothes are still clothes; padded crops cost more accuracy
  # than they saved here.
  config.pp.augment = 'flip'
  # Random erasing (a noise rectangle in half of the images) lets the model
  # train longer and wider before it overfits (docs/experiments.md).
  config.pp.random_erase = 0.5
  config.shuffle_buffer = 60_000  # The whole training set.
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 2e-3
  config.weight_decay = 0.05
  config.label_smoothing = 0.1
  config.batch = 256
  config.batch_eval = 1000
  config.total_steps = 5_000  # 21 epochs.
  config.warmup_steps = 250
  config.eval_every = 1_000
  config.progress_every = 200
  config.checkpoint_every = 1_000
  return config

