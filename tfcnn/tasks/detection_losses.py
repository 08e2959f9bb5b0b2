"""Detection losses: focal classification plus a box term, per image, as the engines want them.

Why these choices:

* **Focal loss** (Lin et al., RetinaNet). A one-stage detector scores tens of thousands of
  anchors per image and almost all are easy background; plain cross-entropy is dominated by
  them. The focal term ``(1 - p_t) ** gamma`` shrinks the loss of well-classified anchors, and
  ``alpha`` weighs *positives* (``1 - alpha`` negatives): with the usual ``alpha = 0.25``
  negatives get three times the weight of positives, which looks backwards but is what the paper
  tuned together with ``gamma = 2`` (the modulating factor already suppresses most negatives).
  Classes are independent sigmoids with no background logit; background is the all-zero one-hot.
  Ignored anchors (class -2, IoU between the two thresholds) contribute nothing. The sum over
  anchors and classes is divided by the image's number of positive anchors (at least 1), so the
  loss does not scale with how many objects an image holds.
* **Box loss** only on positive anchors, normalised the same way: smooth-L1 (Huber) on the
  encoded offsets, or 1 - IoU / 1 - GIoU of the decoded boxes (scale-invariant; GIoU still has a
  gradient when the boxes do not overlap). Every division is guarded so degenerate boxes give
  finite losses *and* gradients (a NaN at a masked anchor would still poison the gradient).
* **Per image** ``[B]`` losses: the tape engine weights and averages per-example losses itself;
  the Keras loss classes reduce them as every Keras loss does.

The single-object localiser has no anchors: softmax cross-entropy over K object classes plus a
"no object" class, and a box term on its directly predicted box when the image has an object.

TensorFlow / Keras are imported inside functions (``import tfcnn.tasks`` stays light); the Keras
loss classes are built and registered (``package="tfcnn"``) on first use, once per process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfcnn.config import DetectionConfig
from tfcnn.models.anchors import AnchorSpec, generate_anchors
from tfcnn.tasks.box_coding import decode

BOX_LOSSES = ("smooth_l1", "iou", "giou")
IGNORE_BELOW = -1.5  # a class column below this is an ignored anchor (box_coding.IGNORE, -2)


# --------------------------------------------------------------------------- classification


def focal_loss(class_targets: Any, logits: Any, gamma: float, alpha: float) -> Any:
    """Sigmoid focal loss per image ``[B]``: ``class_targets [B, A]`` float class ids (-1
    background, -2 ignored), ``logits [B, A, K]``; normalised by max(1, positives per image)."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    class_targets = tf.cast(class_targets, tf.float32)
    num_classes = logits.shape[-1]
    y = tf.one_hot(tf.cast(class_targets, tf.int32), num_classes, dtype=tf.float32)  # -1 / -2: all zeros
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
    # 1 - p_t from sigmoids of +-logits (not 1 - sigmoid): exact where p_t is near 1
    one_minus_pt = y * tf.sigmoid(-logits) + (1.0 - y) * tf.sigmoid(logits)
    alpha_t = y * alpha + (1.0 - y) * (1.0 - alpha)
    loss = alpha_t * ce
    if float(gamma) != 0.0:
        # floor: pow(0, gamma < 1) has an infinite gradient when a sigmoid saturates
        loss = loss * tf.pow(tf.maximum(one_minus_pt, 1e-12), gamma)
    keep = tf.cast(class_targets > IGNORE_BELOW, tf.float32)[..., None]
    return tf.reduce_sum(loss * keep, axis=[1, 2]) / _num_positive(class_targets)


def _num_positive(class_targets: Any) -> Any:
    import tensorflow as tf

    return tf.maximum(tf.reduce_sum(tf.cast(class_targets >= 0, tf.float32), axis=1), 1.0)


# --------------------------------------------------------------------------- boxes


def _check_kind(kind: str) -> None:
    if kind not in BOX_LOSSES:
        raise ValueError(f"box loss {kind!r} is not one of {', '.join(BOX_LOSSES)}")


def giou(a: Any, b: Any) -> Any:
    """Generalised IoU of matching boxes ``[..., 4] x [..., 4] -> [...]`` (Rezatofighi et al.):
    IoU minus the share of the smallest enclosing box neither covers; in [-1, 1], finite (and
    with finite gradients) for degenerate boxes."""
    import tensorflow as tf

    from tfcnn.data.boxes import tf_area

    ymin = tf.maximum(a[..., 0], b[..., 0])
    xmin = tf.maximum(a[..., 1], b[..., 1])
    ymax = tf.minimum(a[..., 2], b[..., 2])
    xmax = tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)
    union = tf_area(a) + tf_area(b) - inter
    enclosing = tf.maximum(tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0]), 0.0) * tf.maximum(
        tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1]), 0.0
    )
    return tf.math.divide_no_nan(inter, union) - tf.math.divide_no_nan(enclosing - union, enclosing)


def _box_terms(kind: str, target: Any, predicted: Any, delta: float) -> Any:
    """Per-box loss ``[...]``: Huber summed over the four coordinates, or 1 - (G)IoU of boxes."""
    import keras

    from tfcnn.data.boxes import tf_elementwise_iou

    _check_kind(kind)
    if kind == "smooth_l1":
        return 4.0 * keras.losses.huber(target, predicted, delta=delta)  # huber averages the last axis
    if kind == "iou":
        return 1.0 - tf_elementwise_iou(target, predicted)
    return 1.0 - giou(target, predicted)


def box_loss(kind: str, targets: Any, deltas: Any, anchors: Any, delta: float) -> Any:
    """Box loss per image ``[B]`` on the positive anchors of ``targets [B, A, 5]`` (from
    :func:`~tfcnn.tasks.box_coding.assign`), ``deltas [B, A, 4]`` the predicted offsets,
    ``anchors [A, 4]``; ``kind`` one of :data:`BOX_LOSSES`; divided by max(1, positives)."""
    import tensorflow as tf

    _check_kind(kind)
    targets = tf.cast(targets, tf.float32)
    deltas = tf.cast(deltas, tf.float32)
    positive = tf.cast(targets[..., 4] >= 0, tf.float32)
    if kind == "smooth_l1":
        per_anchor = _box_terms(kind, targets[..., :4], deltas, delta)
    else:
        anchors = tf.cast(anchors, tf.float32)[None]
        # non-positive targets are zero offsets, i.e. the anchor itself: a real box, finite loss
        per_anchor = _box_terms(kind, decode(targets[..., :4], anchors), decode(deltas, anchors), delta)
    return tf.reduce_sum(per_anchor * positive, axis=1) / _num_positive(targets[..., 4])


def detection_loss(targets: Any, raw: Any, anchors: Any, cfg: DetectionConfig) -> Any:
    """The detector's loss per image ``[B]``: focal + ``cfg.box_weight`` * box loss, from the
    assigned ``targets [B, A, 5]`` and the raw output ``[B, A, 4 + K]``."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    targets = tf.cast(targets, tf.float32)
    cls = focal_loss(targets[..., 4], raw[..., 4:], cfg.focal_gamma, cfg.focal_alpha)
    box = box_loss(cfg.box_loss, targets, raw[..., :4], anchors, cfg.smooth_l1_delta)
    return cls + cfg.box_weight * box


def single_object_parts(targets: Any, raw: Any, cfg: DetectionConfig) -> tuple[Any, Any]:
    """The two unweighted parts of :func:`single_object_loss`, each ``[B]``: softmax CE over the
    K classes + "no object", and the box term (0 for images without an object)."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    targets = tf.cast(targets, tf.float32)
    logits = raw[:, 4:]
    no_object = logits.shape[-1] - 1
    has = targets[:, 4] >= 0
    index = tf.where(has, tf.cast(targets[:, 4], tf.int32), no_object)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=index, logits=logits)
    box = _box_terms(cfg.box_loss, targets[:, :4], raw[:, :4], cfg.smooth_l1_delta)
    return ce, box * tf.cast(has, tf.float32)


def single_object_loss(targets: Any, raw: Any, cfg: DetectionConfig) -> Any:
    """The single-object localiser's loss per image ``[B]``: ``targets [B, 5]`` (from
    :func:`~tfcnn.tasks.box_coding.single_object_target`), ``raw [B, 4 + K + 1]`` (box in [0, 1],
    K class logits, one "no object" logit). ``cfg.classification_weight`` * softmax CE over K + 1
    (target K without an object) + ``cfg.box_weight`` * the box term where there is an object
    (smooth-L1 on the corner coordinates themselves, or 1 - IoU / GIoU)."""
    ce, box = single_object_parts(targets, raw, cfg)
    return cfg.classification_weight * ce + cfg.box_weight * box


# --------------------------------------------------------------------------- Keras loss objects

_LOSS_FIELDS = ("box_loss", "box_weight", "smooth_l1_delta", "focal_gamma", "focal_alpha", "classification_weight")


def _settings_dict(settings: DetectionConfig | dict | None) -> dict[str, Any]:
    """The loss fields of a DetectionConfig (or of a stored settings dict) as plain JSON."""
    if settings is None:
        settings = DetectionConfig()
    if isinstance(settings, dict):
        return {k: settings[k] for k in _LOSS_FIELDS if k in settings}
    return {k: getattr(settings, k) for k in _LOSS_FIELDS}


def _config_from(settings: dict[str, Any]) -> DetectionConfig:
    return DetectionConfig(**{k: v for k, v in settings.items() if k in _LOSS_FIELDS})


def anchor_spec_dict(spec: AnchorSpec | dict) -> dict[str, Any]:
    """An AnchorSpec as a JSON-able dict (tuples as lists), e.g. for a Keras config."""
    if isinstance(spec, dict):
        spec = anchor_spec_from(spec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


def anchor_spec_from(d: dict[str, Any]) -> AnchorSpec:
    """The AnchorSpec back from :func:`anchor_spec_dict`."""
    return AnchorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


_CLASSES: dict[str, type] = {}


def loss_classes() -> dict[str, type]:
    """The Keras loss classes ``{"detection": DetectionLoss, "single_object": SingleObjectLoss}``,
    built and registered with Keras' serialisation on first call (once per process: Keras refuses
    a second registration of a name). Call it (or touch ``detection_losses.DetectionLoss``) before
    ``keras.saving.load_model(compile=True)`` of a detector."""
    if _CLASSES:
        return _CLASSES
    import keras

    @keras.saving.register_keras_serializable(package="tfcnn")
    class DetectionLoss(keras.losses.Loss):
        """:func:`detection_loss` as a Keras loss: ``DetectionLoss(cfg, spec, height, width)``.
        Its config holds the loss settings, the anchor spec and the image size, all plain JSON;
        the anchors are rebuilt from them rather than stored."""

        def __init__(
            self,
            settings: DetectionConfig | dict | None = None,
            anchor_spec: AnchorSpec | dict | None = None,
            height: int = 0,
            width: int = 0,
            name: str = "detection_loss",
            **kwargs: Any,
        ):
            super().__init__(name=name, **kwargs)
            self.settings = _settings_dict(settings)
            self.anchor_spec = anchor_spec_dict(anchor_spec if anchor_spec is not None else AnchorSpec())
            self.height, self.width = int(height), int(width)
            if self.height <= 0 or self.width <= 0:
                raise ValueError(f"DetectionLoss needs the input image size, got {self.height}x{self.width}")
            self._cfg = _config_from(self.settings)
            _check_kind(self._cfg.box_loss)
            self._anchors = generate_anchors(anchor_spec_from(self.anchor_spec), self.height, self.width)

        def call(self, y_true, y_pred):
            return detection_loss(y_true, y_pred, self._anchors, self._cfg)

        def get_config(self) -> dict:
            return {
                **super().get_config(),
                "settings": dict(self.settings),
                "anchor_spec": dict(self.anchor_spec),
                "height": self.height,
                "width": self.width,
            }

    @keras.saving.register_keras_serializable(package="tfcnn")
    class SingleObjectLoss(keras.losses.Loss):
        """:func:`single_object_loss` as a Keras loss: ``SingleObjectLoss(cfg)`` (config: the loss settings)."""

        def __init__(self, settings: DetectionConfig | dict | None = None, name: str = "single_object_loss", **kwargs: Any):
            super().__init__(name=name, **kwargs)
            self.settings = _settings_dict(settings)
            self._cfg = _config_from(self.settings)
            _check_kind(self._cfg.box_loss)

        def call(self, y_true, y_pred):
            return single_object_loss(y_true, y_pred, self._cfg)

        def get_config(self) -> dict:
            return {**super().get_config(), "settings": dict(self.settings)}

    _CLASSES.update(detection=DetectionLoss, single_object=SingleObjectLoss)
    return _CLASSES


def __getattr__(name: str) -> Any:
    """``detection_losses.DetectionLoss`` / ``.SingleObjectLoss``: the classes, built on first
    access (PEP 562) so that importing this module does not import Keras."""
    if name == "DetectionLoss":
        return loss_classes()["detection"]
    if name == "SingleObjectLoss":
        return loss_classes()["single_object"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detection_keras_loss(cfg: DetectionConfig, spec: AnchorSpec, height: int, width: int) -> Any:
    """A ``DetectionLoss`` for ``model.compile`` on a detector with anchors ``spec`` over
    ``height x width`` input images."""
    return loss_classes()["detection"](cfg, spec, height, width)


def single_object_keras_loss(cfg: DetectionConfig) -> Any:
    """A ``SingleObjectLoss`` for ``model.compile`` on a single-object localiser."""
    return loss_classes()["single_object"](cfg)
