"""Typed pipeline configuration, validated from TOML.

Every stage reads one section of a :class:`PipelineConfig`. Validation is strict on purpose:
a typo in a pipeline file (``[train] epoch = 3``) must fail loudly with the key's name and the
allowed values rather than silently train with a default.

Two levels of checking, neither touching a file or a data set:

* :func:`from_dict` (and :func:`load`) checks keys, types, ranges and the cross-field rules that
  need no registry;
* :func:`validate` adds the checks only a registry can make (is ``data.source`` a registered
  kind, does the chosen model take these ``model.options``, ...). The registries live in
  packages above this one, so each registers its check here when it is imported
  (:func:`register_check`); :func:`validate` refuses to pass while one of
  :data:`EXPECTED_CHECKS` is missing, naming the package to import.
  ``tfcnn.pipeline.validate`` imports every stage and calls it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from tfcnn.errors import ConfigError


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"min": lo, "max": hi, "lo_open": lo_open}


# Upper bounds on counts: far above any real run, low enough to catch a typo (an extra 000) or
# a unit mix-up before it allocates memory or trains for ever. Every numeric setting has a range.
MAX_EPOCHS = 100_000
MAX_SAMPLES = 1_000_000_000
MAX_SEED = 2**32 - 1  # numpy's and Keras' seed limit
MAX_IMAGE_SIDE = 16_384  # pixels, each side of data.image_size


@dataclass
class AugmentConfig:
    """Training-time augmentation, applied in the tf.data pipeline on uint8 images (train split only).

    Order inside a batch: geometric, photometric, a policy (RandAugment and/or AugMix), erasing
    and cutout, then batch mixing (mixup / CutMix), which turns the labels into probability
    vectors. Every op is off at its default (0, false), so an empty ``[data.augment]`` changes
    nothing. The meaning of each key is in tfcnn/data/augment.py, beside the op that reads it.
    """

    # ---- geometric
    flip: bool = False  # random horizontal flip
    vflip: bool = False  # random vertical flip
    translate: float = field(default=0.0, metadata=_range(0.0, 0.5))  # fraction of height/width
    rotate: float = field(default=0.0, metadata=_range(0.0, 0.5))  # fraction of a full turn
    zoom: float = field(default=0.0, metadata=_range(0.0, 0.5))
    shear: float = field(default=0.0, metadata=_range(0.0, 1.0))  # shear factor, both axes
    crop_padding: int = field(default=0, metadata=_range(0, 1024))  # pixels of zero padding, then a random crop back
    resized_crop: bool = False  # Inception-style random-resized crop, resized back to the image size
    resized_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata=_range(0.0, 1.0, lo_open=True))
    resized_crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3], metadata=_range(0.0, 100.0, lo_open=True))
    # ---- photometric
    brightness: float = field(default=0.0, metadata=_range(0.0, 1.0))  # +-fraction of the value range
    contrast: float = field(default=0.0, metadata=_range(0.0, 1.0))
    saturation: float = field(default=0.0, metadata=_range(0.0, 1.0))  # 3 channels only; factor 0.5 -+ saturation/2
    hue: float = field(default=0.0, metadata=_range(0.0, 1.0))  # 3 channels only; +-hue/2 of the colour circle
    grayscale: float = field(default=0.0, metadata=_range(0.0, 1.0))  # 3 channels only; probability per image
    noise: float = field(default=0.0, metadata=_range(0.0, 255.0))  # Gaussian noise std, pixel units
    blur: float = field(default=0.0, metadata=_range(0.0, 1.0))  # Gaussian blur: probability per image
    blur_sigma: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))  # its sigma, pixels (Keras takes <= 1)
    # each image's ink over textured noise of this amplitude (fraction of 255), fashion_scenes' background
    texture: float = field(default=0.0, metadata=_range(0.0, 1.0))
    texture_cell: int = field(default=8, metadata=_range(1, 1024))  # pixels per cell of its coarse noise grid
    # ---- policies
    randaugment_ops: int = field(default=0, metadata=_range(0, 11))  # ops per image (0 = off)
    randaugment_magnitude: float = field(default=0.3, metadata=_range(0.0, 1.0))  # Keras RandAugment factor
    augmix: bool = False
    augmix_chains: int = field(default=3, metadata=_range(1, 8))
    augmix_depth: int = field(default=3, metadata=_range(1, 8))  # each chain has 1..augmix_depth ops
    augmix_magnitude: float = field(default=0.3, metadata=_range(0.0, 1.0))
    augmix_alpha: float = field(default=1.0, metadata=_range(0.0, 100.0, lo_open=True))  # Dirichlet/Beta concentration
    erasing: float = field(default=0.0, metadata=_range(0.0, 1.0))  # random erasing: probability per image
    erasing_area: list[float] = field(default_factory=lambda: [0.02, 1 / 3], metadata=_range(0.0, 1.0, lo_open=True))
    erasing_aspect: list[float] = field(default_factory=lambda: [0.3, 1 / 0.3], metadata=_range(0.0, 100.0, lo_open=True))
    erasing_value: Literal["mean", "zero", "random"] = "mean"  # mean: the training mean (0 after normalisation)
    cutout: float = field(default=0.0, metadata=_range(0.0, 0.9))  # one square of this side (fraction) on every image
    # ---- batch mixing (labels become probability vectors; label smoothing composes with them)
    mixup: float = field(default=0.0, metadata=_range(0.0, 100.0))  # Beta(alpha, alpha) concentration (0 = off)
    mixup_prob: float = field(default=1.0, metadata=_range(0.0, 1.0))  # probability per batch
    cutmix: float = field(default=0.0, metadata=_range(0.0, 100.0))  # Beta(alpha, alpha) concentration (0 = off)
    cutmix_prob: float = field(default=1.0, metadata=_range(0.0, 1.0))  # probability per batch

    def summary(self) -> dict[str, Any]:
        """Only the settings that do something, each op with its own parameters (model card,
        report, run listing): a default list such as ``erasing_area`` says nothing while
        ``erasing`` is 0."""
        out: dict[str, Any] = {}
        groups = {
            "resized_crop": ("resized_crop_scale", "resized_crop_ratio"),
            "blur": ("blur_sigma",),
            "texture": ("texture_cell",),
            "randaugment_ops": ("randaugment_magnitude",),
            "augmix": ("augmix_chains", "augmix_depth", "augmix_magnitude", "augmix_alpha"),
            "erasing": ("erasing_area", "erasing_aspect", "erasing_value"),
            "mixup": ("mixup_prob",),
            "cutmix": ("cutmix_prob",),
        }
        dependent = {k for keys in groups.values() for k in keys}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in dependent or not value:
                continue
            out[f.name] = value
            for extra in groups.get(f.name, ()):
                out[extra] = getattr(self, extra)
        return out

    @property
    def mixes_labels(self) -> bool:
        """True when mixup or CutMix can fire, so training labels are probability vectors."""
        return bool((self.mixup and self.mixup_prob) or (self.cutmix and self.cutmix_prob))


@dataclass
class ScenesConfig:
    """Generated detection / segmentation scenes (``data.source = "fashion_scenes"`` or ``"shapes"``).

    Read only by those two sources (:mod:`tfcnn.data.scenes`): each scene pastes
    ``min_objects..max_objects`` items, each scaled by a factor in ``[min_scale, max_scale]``, at
    random places on a ``size`` x ``size`` canvas of textured noise, no two overlapping by more
    than ``max_iou``. Train (and validation) scenes use only the source's training items, test
    scenes only its test items, so no test item is ever seen in training.
    """

    size: int = field(default=96, metadata=_range(32, 1024))  # canvas side, pixels
    min_objects: int = field(default=1, metadata=_range(0, 64))
    max_objects: int = field(default=4, metadata=_range(1, 64))
    min_scale: float = field(default=0.7, metadata=_range(0.1, 8.0))  # of the item's own 28x28 size
    max_scale: float = field(default=1.6, metadata=_range(0.1, 8.0))
    max_iou: float = field(default=0.3, metadata=_range(0.0, 1.0))  # pairwise box IoU limit (0: no overlap)
    # objects per train (and validation) scene, when it should differ from the test scenes'
    # min_objects..max_objects: denser training scenes show the model more items per step for the
    # same compute (mosaic augmentation's idea); None: the same range as the test scenes
    train_min_objects: Optional[int] = field(default=None, metadata=_range(0, 64))
    train_max_objects: Optional[int] = field(default=None, metadata=_range(1, 64))
    background: float = field(default=0.15, metadata=_range(0.0, 1.0))  # texture amplitude, fraction of 255
    num_train: int = field(default=6000, metadata=_range(1, MAX_SAMPLES))  # scenes before the validation split
    num_test: int = field(default=1000, metadata=_range(1, MAX_SAMPLES))
    # what a scene's label is: boxes (detection) or a per-pixel class mask (segmentation);
    # "auto" follows the task
    labels: Literal["auto", "boxes", "masks"] = "auto"
    mask_classes: Literal["classes", "foreground"] = "classes"  # masks: 0 background + one id per class, or 0/1
    seed: Optional[int] = field(default=None, metadata=_range(0, MAX_SEED))  # None: data.seed

    def train_range(self) -> tuple[int, int]:
        """(min, max) objects per train scene: the train_* keys, else the test scenes' range."""
        lo = self.min_objects if self.train_min_objects is None else self.train_min_objects
        hi = self.max_objects if self.train_max_objects is None else self.train_max_objects
        return lo, hi

    def most_objects(self) -> int:
        """The most objects any scene (train or test) can hold: the label rows M."""
        return max(self.max_objects, self.train_range()[1])


@dataclass
class DataConfig:
    """Where images come from and how they are split and batched."""

    # a kind registered in tfcnn.data.sources: "fashion_mnist", "mnist", "idx:<dir>", "tfds:<name>",
    # "folder:<dir>" or "numpy:<file.npz>" (checked by validate(), which has the registry)
    source: str = "fashion_mnist"
    path: Optional[str] = None  # fashion_mnist/mnist: explicit IDX directory (before $TFCNN_DATA_DIR); tfds: data_dir
    image_size: Optional[list[int]] = None  # [height, width]; None keeps the source's size
    channels: Optional[int] = field(default=None, metadata={"choices": (1, 3)})
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9))
    # held out (stratified) as the test split when a source has none: folder:, tfds without "test", .npz without x_test
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    # keep only these classes (names or ids), relabelled 0..K-1 in this order, in every split
    # (e.g. pre-train on Fashion-MNIST's 0-4, transfer to 5-9); None keeps them all
    classes: Optional[list[Union[int, str]]] = None
    train_subset: Optional[int] = field(default=None, metadata=_range(1, MAX_SAMPLES))  # stratified cap
    test_subset: Optional[int] = field(default=None, metadata=_range(1, MAX_SAMPLES))
    batch_size: int = field(default=64, metadata=_range(1, 1_000_000))
    shuffle_buffer: int = field(default=10000, metadata=_range(1, 100_000_000))
    # how the train split is drawn (class labels only): "shuffle" (each image once an epoch) or
    # "balanced" (classes drawn uniformly, images within a class reshuffled; same epoch length)
    sampling: Literal["shuffle", "balanced"] = "shuffle"
    cache: bool = True
    seed: int = field(default=42, metadata=_range(0, MAX_SEED))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # detection / segmentation labels: at most this many objects per image (the padded label
    # array's length); None: the source's own maximum (scenes: scenes.max_objects)
    max_objects: Optional[int] = field(default=None, metadata=_range(1, 10_000))
    scenes: ScenesConfig = field(default_factory=ScenesConfig)


@dataclass
class ModelConfig:
    """Which registered architecture to build, and its knobs."""

    name: str = "compact_cnn"
    width: float = field(default=1.0, metadata=_range(0.0, 16.0, lo_open=True))  # channel multiplier
    depth: int = field(default=0, metadata=_range(0, 1000))  # 0 = the architecture's default
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.95))
    l2: float = field(default=0.0, metadata=_range(0.0, 10.0))
    activation: str = "relu"
    batch_norm: bool = True
    se: bool = False  # squeeze-and-excitation blocks where the architecture has them
    block: Literal["basic", "bottleneck"] = "basic"  # resnet only
    # pretrained models only (efficientnet_lite0, the keras.applications backbones): "imagenet"
    # (what None means for them), a path to a Keras .weights.h5 file, or "none" (random init);
    # checked by tfcnn.models.pretrained
    weights: Optional[str] = None
    # any classifier: start from a tfcnn classifier's model.keras (a previous run's): its namesake
    # layers but logits, and its normalisation (tfcnn.models.warm_start)
    init_from: Optional[str] = None
    options: dict = field(default_factory=dict)  # extra builder keyword arguments


@dataclass
class EarlyStoppingConfig:
    """Two rules: Keras-style patience on a validation metric, and the course's target-loss rule."""

    enabled: bool = True
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = field(default=5, metadata=_range(0, MAX_EPOCHS))
    min_delta: float = field(default=0.0, metadata=_range(0.0, 1e6))
    restore_best: bool = True
    # The course's rule: stop after `target_patience` consecutive epochs with train loss < target_loss.
    target_loss: Optional[float] = field(default=None, metadata=_range(0.0, 1e6))
    target_patience: int = field(default=3, metadata=_range(1, MAX_EPOCHS))


@dataclass
class FinetuneConfig:
    """Fine-tuning a pretrained backbone (:mod:`tfcnn.train.finetune`): what is frozen, when it
    thaws, and per-group learning rates. The backbone is every layer before the classifier head
    (the head starts at the global pooling, or at a conv adapter), in the model's layer order."""

    # None: all trainable; a fraction in [0, 1] of the backbone's weighted layers, from the input
    # side; or a layer name: that layer and every layer before it
    freeze: Union[float, str, None] = field(default=None, metadata=_range(0.0, 1.0))
    # gradual unfreezing: {epoch = freeze value}, from that (1-based) epoch on, e.g. {3 = 0.5, 6 = 0.0}
    unfreeze: dict = field(default_factory=dict)
    # BatchNormalization of *unfrozen* backbone layers: "frozen" keeps it in inference mode (its
    # statistics and scale stay the pretrained ones; Keras' fine-tuning advice), "train" updates
    # it. Frozen layers' BatchNormalization is always in inference mode.
    batch_norm: Literal["frozen", "train"] = "frozen"
    # discriminative learning rates: {group = multiplier of train.learning_rate}; groups are
    # "backbone", "head", or a layer-name pattern (fnmatch, e.g. "block0*"), which wins over them
    lr_multipliers: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Engine, optimisation and distribution settings shared by the fit and tape engines."""

    engine: Literal["tape", "fit"] = "tape"
    epochs: int = field(default=10, metadata=_range(1, MAX_EPOCHS))
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop", "adagrad", "lion"] = "adam"
    learning_rate: float = field(default=1e-3, metadata=_range(0.0, 10.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    nesterov: bool = False  # sgd: Nesterov momentum
    # Keras optimizers' weight EMA: evaluation and export use the averaged weights (per-epoch
    # validation numbers are the raw weights'); needs early_stopping.restore_best = false
    use_ema: bool = False
    ema_momentum: float = field(default=0.99, metadata=_range(0.0, 1.0, lo_open=True))
    # Keras optimizers' gradient accumulation: one update per this many batches (the mean of their
    # gradients), so an update sees batch_size * steps images; schedules count updates
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1, 4096))
    schedule: Literal["constant", "cosine", "cosine_restarts", "exponential", "step", "onecycle"] = "constant"
    # cosine_restarts (SGDR): the first cycle's length (0 = a third of training), each next cycle
    # restart_mult times longer and restart_decay times lower at its start
    restart_epochs: float = field(default=0.0, metadata=_range(0.0, MAX_EPOCHS))
    restart_mult: float = field(default=2.0, metadata=_range(1.0, 100.0))
    restart_decay: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    warmup_epochs: float = field(default=0.0, metadata=_range(0.0, MAX_EPOCHS))
    min_lr_fraction: float = field(default=0.0, metadata=_range(0.0, 1.0))
    decay_rate: float = field(default=0.9, metadata=_range(0.0, 1.0, lo_open=True))  # exponential: lr factor per epoch
    step_epochs: int = field(default=0, metadata=_range(0, MAX_EPOCHS))  # step: epochs between drops (0 = a third of training)
    step_factor: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))  # step: lr factor per drop
    plateau_factor: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))  # reduce_lr_on_plateau
    plateau_patience: int = field(default=2, metadata=_range(0, MAX_EPOCHS))  # epochs without improvement before a cut
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 10.0))  # decoupled (AdamW-style)
    clipnorm: Optional[float] = field(default=None, metadata=_range(0.0, 1e6, lo_open=True))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 0.5))
    # imbalanced data: "balanced" (n / (K * n_class)) or {class name or id = weight}; training loss only
    class_weight: Union[Literal["balanced"], dict, None] = None
    reduce_lr_on_plateau: bool = False  # fit engine: keras ReduceLROnPlateau
    strategy: Literal["default", "mirrored", "multi_worker", "tpu"] = "default"
    devices: Optional[list[str]] = None  # for mirrored, e.g. ["/cpu:0", "/cpu:1"]
    # true: mixed_float16 on GPU, mixed_bfloat16 on CPU/TPU; "auto": the same where the hardware has the
    # instructions for it (a GPU, a TPU, a CPU with AVX512-BF16 or AMX), float32 elsewhere
    mixed_precision: Union[bool, Literal["auto"]] = False
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism
    seed: int = field(default=42, metadata=_range(0, MAX_SEED))
    checkpoint_every: int = field(default=1, metadata=_range(1, MAX_EPOCHS))  # epochs
    max_checkpoints: int = field(default=3, metadata=_range(1, 10_000))
    tensorboard: bool = True
    histogram_freq: int = field(default=0, metadata=_range(0, MAX_EPOCHS))  # epochs between weight histograms
    gradient_norms: bool = True  # tape engine: per-layer gradient norms per epoch
    steps_per_execution: int = field(default=16, metadata=_range(1, 100_000))  # train steps per compiled call (both engines)
    jit_compile: bool = False  # XLA-compile the train step (tape engine)
    # BatchNormalization through TensorFlow's fused kernel while training (both engines; model.keras
    # keeps Keras' own layer): same results, about 1.3x faster training steps for compact_cnn on a CPU
    fused_batch_norm: bool = True
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class EvaluateConfig:
    """What the evaluation stage reports on the held-out test split."""

    top_k: int = field(default=5, metadata=_range(1, 1000))
    calibration_bins: int = field(default=15, metadata=_range(2, 100))  # equal-width confidence bins for ECE
    confident_threshold: float = field(default=0.95, metadata=_range(0.5, 1.0))  # "likely mislabeled" mistakes
    embedding_samples: int = field(default=1000, metadata=_range(0, 1_000_000))  # test images for PCA/t-SNE (0 = skip)
    gallery_size: int = field(default=25, metadata=_range(1, 100))  # images per gallery (mistakes, Grad-CAM)
    # Fit one temperature T on the validation split's logits (min NLL) after training; the exported
    # softmax and every artifact then return softmax(logits / T) (recorded in contract.json)
    temperature_scaling: bool = False


@dataclass
class ExportConfig:
    """Which artifacts the export stage writes, and how they are checked."""

    enabled: bool = True
    name: Optional[str] = None  # model name in export/<name>/<version>; default: the run name
    root: str = "export"
    # The model repository's path as TF Serving sees it (e.g. "/models" in the usual container):
    # models.config's base_path is <serving_base>/<name>; None = this repository's absolute path.
    serving_base: Optional[str] = None
    # Registered export formats (tfcnn.export.formats) to write; None = every format the task exports by default.
    formats: Optional[list[str]] = None
    representative_samples: int = field(default=300, metadata=_range(1, 1_000_000))
    # tflite_int8: regular expressions matched against tensor names (they hold the Keras layer
    # names); matching ops stay float32 inside the integer model. For the few layers the per-layer
    # analysis (tflite/model_int8.quant_debug.json) shows losing the signal, e.g. ["block14_project"].
    int8_keep_float: list[str] = field(default_factory=list)
    coreml_precision: Literal["float16", "float32"] = "float16"
    # How a client's image of another aspect ratio meets the model's size (contract.json input.fit;
    # tfcnn predict on the version and the Android core honour it): "stretch" resizes the whole
    # image, as the folder source does to training images; "center_crop" resizes the centred box.
    fit: Literal["stretch", "center_crop"] = "stretch"
    verify: bool = True
    verify_samples: Optional[int] = field(default=None, metadata=_range(1, MAX_SAMPLES))  # None = whole test split
    # client checks verify does not run, e.g. ["mediapipe"] where it cannot be installed (recorded as
    # skipped by the user); a client that is neither skipped nor importable fails verify
    skip_clients: list[str] = field(default_factory=list)
    latency_runs: int = field(default=50, metadata=_range(1, 100_000))
    threads: int = field(default=1, metadata=_range(1, 1024))
    author: str = "tfcnn"
    license: str = "Apache-2.0"
    description: str = ""
    # Per-format overrides of the verify limits, e.g. {tflite_int8 = {agreement = 0.98}}; each
    # format's defaults live in its module (tfcnn/export/formats/), which also checks the keys.
    thresholds: dict = field(default_factory=dict)


@dataclass
class ReconstructionConfig:
    """The reconstruction task (autoencoders): its loss, input noise and anomaly detection.

    Read only when ``task = "reconstruction"``; the defaults train a plain autoencoder with MSE.
    """

    loss: Literal["mse", "bce", "ssim"] = "mse"  # per-pixel on [0, 1] images; ssim = 1 - SSIM
    # Denoising: noise applied in the tf.data pipeline to the input only (the target stays clean).
    noise: Literal["none", "gaussian", "salt_pepper", "masking"] = "none"
    # gaussian: std as a fraction of the pixel range; salt_pepper / masking: fraction of pixels hit
    noise_amount: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # Anomaly detection: this class is left out of training; it is the anomaly at test time.
    anomaly_class: Optional[int] = field(default=None, metadata=_range(0, 100_000))
    # Share of the validation split that is the held-out class (known, labelled; 0 = none there).
    anomaly_val_fraction: float = field(default=0.05, metadata=_range(0.0, 0.9))
    # How the threshold is chosen on validation: best F1 (needs anomalies there) or a target FPR.
    threshold: Literal["f1", "fpr"] = "f1"
    target_fpr: float = field(default=0.05, metadata=_range(0.0, 1.0, lo_open=True))
    grid_size: int = field(default=8, metadata=_range(1, 64))  # report grids: images per row


@dataclass
class DetectionConfig:
    """The detection task: its losses, anchor assignment and post-processing.

    Read only when ``task = "detection"``. Anchor geometry (pyramid levels, sizes, scales,
    aspect ratios) belongs to the detector model and lives in its ``model.options``; this
    section holds what the task does with the anchors (:mod:`tfcnn.tasks.detection`).
    """

    box_loss: Literal["smooth_l1", "iou", "giou"] = "smooth_l1"
    box_weight: float = field(default=1.0, metadata=_range(0.0, 1000.0))  # lambda of the box term
    smooth_l1_delta: float = field(default=0.1, metadata=_range(0.0, 10.0, lo_open=True))  # Huber delta on encoded offsets
    focal_gamma: float = field(default=2.0, metadata=_range(0.0, 10.0))
    focal_alpha: float = field(default=0.25, metadata=_range(0.0, 1.0))  # weight of positives (negatives: 1 - alpha)
    positive_iou: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))  # anchor IoU >= this: positive
    negative_iou: float = field(default=0.4, metadata=_range(0.0, 1.0))  # < this: background; between: ignored
    # inference (evaluation and every exported format): decode, score threshold, per-class NMS, top-N
    score_threshold: float = field(default=0.05, metadata=_range(0.0, 1.0))
    nms_iou: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    pre_nms_top_k: int = field(default=1000, metadata=_range(1, 1_000_000))  # candidates (anchor, class) kept before NMS
    max_detections: int = field(default=100, metadata=_range(1, 10_000))
    classification_weight: float = field(default=1.0, metadata=_range(0.0, 1000.0))  # single-object models' CE weight
    report_images: int = field(default=12, metadata=_range(0, 1000))  # test scenes drawn in the report


@dataclass
class SegmentationConfig:
    """The segmentation task: its loss and what its evaluation reports.

    Read only when ``task = "segmentation"`` (:mod:`tfcnn.tasks.segmentation`); the masks come
    from the data source (``data.scenes.labels = "masks"``: 0 background, class id + 1).
    """

    loss: Literal["dice", "ce", "dice_ce", "focal"] = "dice_ce"  # soft Dice, cross-entropy, their sum, focal
    class_weights: Optional[list[float]] = field(default=None, metadata=_range(0.0, 1e6, lo_open=True))  # per output class, background first
    dice_smooth: float = field(default=1.0, metadata=_range(0.0, 1e6))
    focal_gamma: float = field(default=2.0, metadata=_range(0.0, 10.0))
    boundary_tolerance: int = field(default=2, metadata=_range(0, 64))  # boundary F-score tolerance, pixels (0: off)
    report_images: int = field(default=8, metadata=_range(0, 1000))  # best and worst test images drawn
    # Test-time flip: every artifact (and the evaluation) runs each image and its left-right mirror
    # image and averages the two logit maps (the mirror's mirrored back): twice the inference cost;
    # a mirrored image then gets exactly the mirrored mask. Inference only; training is unchanged.
    test_time_flip: bool = False


# Search-space distributions a [tune] entry may use (tfcnn.tune turns them into KerasTuner's).
TUNE_DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")


@dataclass
class TuneConfig:
    """`tfcnn tune PIPELINE`: a KerasTuner search over settings of this file (read by tfcnn.tune).

    The search space is written beside these settings with dotted keys, e.g.
    ``train.learning_rate = {log_uniform = [1e-4, 1e-2]}`` or ``model.width = {choice = [0.5, 1.0]}``
    under ``[tune]``; :func:`from_dict` collects them into ``space`` (``{"train.learning_rate":
    {"log_uniform": [...]}}``), and tfcnn.tune checks each key and bound against the config.
    """

    algorithm: Literal["random", "bayesian", "hyperband"] = "random"
    max_trials: int = field(default=10, metadata=_range(1, 10_000))  # random / bayesian
    # the best value of this history column (validation split) ranks the trials
    objective: str = "val_accuracy"
    direction: Literal["auto", "max", "min"] = "auto"  # auto: min for *loss, else max
    hyperband_factor: int = field(default=3, metadata=_range(2, 100))  # hyperband: train.epochs is the max budget
    seed: int = field(default=42, metadata=_range(0, MAX_SEED))
    space: dict = field(default_factory=dict)


def _collect_tune_space(data: dict) -> dict:
    """Move ``[tune]``'s dotted search-space entries into ``tune.space`` (see TuneConfig)."""
    tune = data.get("tune")
    if not isinstance(tune, dict):
        return data
    own = {f.name for f in dataclasses.fields(TuneConfig)}
    given = tune.get("space", {})
    if not isinstance(given, dict):
        return data  # _build names the wrong type of tune.space
    space = dict(given)
    rest = {k: v for k, v in tune.items() if k in own}

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict) and not (set(node) & set(TUNE_DISTRIBUTIONS)):
            for k, v in node.items():
                walk(v, [*path, k])
        else:
            space[".".join(path)] = node

    for k, v in tune.items():
        if k not in own:
            walk(v, [k])
    rest["space"] = space
    return {**data, "tune": rest}


@dataclass
class PipelineConfig:
    """A whole run: config -> data -> model -> train -> evaluate -> export -> verify -> report."""

    name: str = "run"
    task: str = "classification"  # a registered task (tfcnn.tasks): what the model is trained to do
    out_dir: Optional[str] = None  # default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    report: bool = True


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{key}: got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list ({_type_name(tp)}), got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of settings, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{key} = {value!r} is too large to be a number; give a real value") from None
        if not finite:  # TOML spells them nan / inf; no setting means either
            raise ConfigError(f"{key} = {value!r} is not a finite number; give a real value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__} {value!r}")
        return value
    return value


def _check_meta(value: Any, meta: typing.Mapping, key: str) -> None:
    if value is None:
        return
    if isinstance(value, list):  # a range such as data.augment.erasing_area: each end in the field's range
        for i, v in enumerate(value):
            _check_meta(v, meta, f"{key}[{i}]")
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {', '.join(map(repr, meta['choices']))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, str):  # a union's other choice (train.finetune.freeze: a layer name); ranges are for numbers
        return
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        op = ">" if meta.get("lo_open") else ">="
        raise ConfigError(f"{key} = {value!r} is impossible; it must be {op} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r} is impossible; it must be <= {hi}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown key {_join(prefix, unknown[0])!r} in {where}; allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = _join(prefix, name)
        coerced = _coerce(value, hints[name], key)
        _check_meta(coerced, fields[name].metadata, key)
        kwargs[name] = coerced
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# The [low, high] ranges of data.augment, and the ops that need colour images.
AUGMENT_RANGES = ("resized_crop_scale", "resized_crop_ratio", "erasing_area", "erasing_aspect")
COLOUR_AUGMENTS = ("saturation", "hue", "grayscale")


def _augment_checks(cfg: PipelineConfig) -> None:
    """[low, high] pairs are pairs in order; colour ops refuse data.channels = 1 (the data stage
    refuses them again on 1-channel data whatever data.channels says)."""
    aug = cfg.data.augment
    for name in AUGMENT_RANGES:
        pair = getattr(aug, name)
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"data.augment.{name} = {pair!r} is impossible; give [low, high] with low <= high")
    if cfg.data.channels == 1:
        for name in COLOUR_AUGMENTS:
            if getattr(aug, name):
                raise ConfigError(
                    f"data.augment.{name} needs colour images but data.channels = 1; "
                    f"remove data.augment.{name} or set data.channels = 3"
                )


def _scenes_checks(cfg: PipelineConfig) -> None:
    """Scene ranges in order, the anchor-assignment band in order, and ``scenes.labels = "auto"``
    resolved from the task (boxes for detection, masks for segmentation)."""
    sc = cfg.data.scenes
    if sc.min_objects > sc.max_objects:
        raise ConfigError(
            f"data.scenes.min_objects = {sc.min_objects} > data.scenes.max_objects = {sc.max_objects}; give min <= max"
        )
    lo, hi = sc.train_range()
    if lo > hi:
        raise ConfigError(
            f"data.scenes.train_min_objects..train_max_objects is {lo}..{hi} (unset ones follow min_objects / "
            "max_objects); give min <= max"
        )
    if sc.min_scale > sc.max_scale:
        raise ConfigError(f"data.scenes.min_scale = {sc.min_scale} > data.scenes.max_scale = {sc.max_scale}; give min <= max")
    if sc.labels == "auto":
        sc.labels = "masks" if cfg.task == "segmentation" else "boxes"
    det = cfg.detection
    if det.negative_iou > det.positive_iou:
        raise ConfigError(
            f"detection.negative_iou = {det.negative_iou} > detection.positive_iou = {det.positive_iou}; "
            "anchors between the two are ignored, so give negative_iou <= positive_iou"
        )


def _cross_checks(cfg: PipelineConfig) -> None:
    """The rules between fields that need no registry (from_dict and validate both run them)."""
    _augment_checks(cfg)
    if isinstance(cfg.train.class_weight, dict):
        if not cfg.train.class_weight:
            raise ConfigError("train.class_weight = {} weighs nothing; give {class = weight, ...} or 'balanced'")
        for name, w in cfg.train.class_weight.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise ConfigError(f"train.class_weight.{name} = {w!r} must be a positive finite number")
    if cfg.data.sampling == "balanced" and cfg.train.class_weight == "balanced":
        raise ConfigError(
            "data.sampling = 'balanced' and train.class_weight = 'balanced' would correct the imbalance twice "
            "(rare classes drawn more often and weighted up); choose one"
        )
    _scenes_checks(cfg)
    size = cfg.data.image_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ConfigError(f"data.image_size = {size!r} is impossible; give [height, width] with both >= 1")
    if size is not None and max(size) > MAX_IMAGE_SIDE:
        raise ConfigError(f"data.image_size = {size!r} is impossible; each side must be <= {MAX_IMAGE_SIDE}")
    if cfg.train.strategy == "mirrored" and cfg.train.devices is not None and len(cfg.train.devices) < 1:
        raise ConfigError("train.devices must list at least one device for the mirrored strategy")
    if cfg.data.batch_size > 1 and cfg.train.strategy == "mirrored" and cfg.train.devices:
        if cfg.data.batch_size % len(cfg.train.devices):
            raise ConfigError(
                f"data.batch_size = {cfg.data.batch_size} must divide evenly over "
                f"{len(cfg.train.devices)} train.devices"
            )


# --------------------------------------------------------------------------- registry checks

Check = Callable[[PipelineConfig], None]

# The checks validate() insists on, and who registers each: (what it checks, package to import).
EXPECTED_CHECKS = ("data", "model", "task", "train", "export")
_CHECK_OWNERS = {
    "data": ("the data source registry", "tfcnn.data"),
    "model": ("the model registry", "tfcnn.models"),
    "task": ("the task registry", "tfcnn.tasks"),
    "train": ("the training checks (early-stopping monitor)", "tfcnn.train"),
    "export": ("the export format registry", "tfcnn.export"),
}
_CHECKS: dict[str, Check] = {}


def register_check(name: str, fn: Check) -> Check:
    """Add a registry's no-I/O check of a whole config, run by :func:`validate`.

    Called at import time by the package that owns the registry. ``fn(cfg)`` raises ConfigError
    (one line naming the key) or returns None. A second, different function under a taken name
    is refused, so two packages cannot silently replace each other; re-registering the same
    function (a module reload) is allowed.
    """
    if not callable(fn):
        raise TypeError(f"register_check({name!r}, ...) needs a function of a PipelineConfig")
    old = _CHECKS.get(name)
    if old is not None and old is not fn and _qualname(old) != _qualname(fn):
        raise ValueError(f"config check {name!r} is registered twice ({_qualname(old)} and {_qualname(fn)})")
    _CHECKS[name] = fn
    return fn


def registered_checks() -> dict[str, Check]:
    """The registered checks by name, in the order validate runs them."""
    order = [n for n in EXPECTED_CHECKS if n in _CHECKS] + [n for n in _CHECKS if n not in EXPECTED_CHECKS]
    return {n: _CHECKS[n] for n in order}


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _missing_checks_message(missing: list[str]) -> str:
    whats = [_CHECK_OWNERS.get(n, (f"the {n!r} check", "the package that registers it"))[0] for n in missing]
    packages = [_CHECK_OWNERS.get(n, ("", f"the package registering {n!r}"))[1] for n in missing]
    if len(missing) == 1:
        return f"{whats[0]} is not loaded; import {packages[0]} or call tfcnn.pipeline.validate"
    return (
        f"{', '.join(whats[:-1])} and {whats[-1]} are not loaded; "
        f"import {', '.join(packages)} or call tfcnn.pipeline.validate"
    )


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Every check a config can pass without reading a file: the generic rules, then each
    registered registry check (data, model, task, train, export, then any others).

    Raises ConfigError with one line: the first problem found, or which registries are not
    loaded (a check that is not registered must not pass silently). Returns ``cfg``.
    """
    missing = [n for n in EXPECTED_CHECKS if n not in _CHECKS]
    if missing:
        raise ConfigError(_missing_checks_message(missing))
    _cross_checks(cfg)
    for fn in registered_checks().values():
        fn(cfg)
    return cfg


def from_dict(data: dict) -> PipelineConfig:
    """Validate a parsed pipeline mapping into a typed config (raises ConfigError)."""
    cfg = _build(PipelineConfig, _collect_tune_space(data), "")
    _cross_checks(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` where value is TOML (bare words are taken as strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like section.key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r} has no key before '='")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply --set overrides to a raw mapping before validation, so they get the same checks."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
        node[path[-1]] = value
    return data


def load(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a TOML pipeline file, apply overrides, validate."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"pipeline file {str(path)!r} is a directory, not a TOML file; "
            "pass a file such as pipelines/fashion_mnist.toml"
        )
    if not path.is_file():
        raise ConfigError(f"pipeline file {str(path)!r} does not exist; pass a TOML file such as pipelines/fashion_mnist.toml")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{raw[exc.start]:02X} at byte offset {exc.start} (line {line}); "
            "save the pipeline file as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None
    try:
        return from_dict(apply_overrides(data, overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def to_dict(cfg: Any) -> dict:
    """Plain mapping of a config (for config.json in the run directory)."""
    return dataclasses.asdict(cfg)


def save(cfg: PipelineConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_json(path: str | Path) -> PipelineConfig:
    """Reload the resolved config a run directory stores (config.json)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is missing; is this a tfcnn run directory?")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path}: not a readable config.json ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a config.json (a JSON object of settings)")
    return from_dict(_drop_none(data))


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def _toml_value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"{key} = {v} cannot be written to a pipeline file (not a finite number)")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, key) for x in v) + "]"
    if isinstance(v, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(x, f'{key}.{k}')}" for k, x in v.items() if x is not None)
        return "{" + items + "}"
    raise ConfigError(f"{key} = {v!r} ({type(v).__name__}) cannot be written to a pipeline file")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps(cfg: PipelineConfig, *, header: str = "", skip: tuple[str, ...] = ()) -> str:
    """The config as a TOML pipeline file that :func:`load` reads back to an equal config.

    Settings at their defaults are left out, so the file says what was chosen (``tfcnn tune``
    writes its best trial with this). Sections are tables; dict settings (``model.options``,
    ``export.thresholds``) are inline tables; None values are omitted (None is every Optional's
    default here). ``skip`` leaves out whole top-level sections (e.g. ``("tune",)``).
    """
    lines: list[str] = [f"# {ln}" if ln else "#" for ln in header.splitlines()]

    def section(obj: Any, prefix: str) -> None:
        default = type(obj)()
        scalars, tables = [], []
        for f in dataclasses.fields(obj):
            value, base = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                tables.append((f.name, value))
            elif value is not None and value != base:
                scalars.append(f"{_toml_key(f.name)} = {_toml_value(value, _join(prefix, f.name))}")
        if scalars:
            if prefix:
                lines.extend(["", f"[{prefix}]"])
            lines.extend(scalars)
        for name, value in tables:
            if not prefix and name in skip:
                continue
            section(value, _join(prefix, name))

    section(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"
