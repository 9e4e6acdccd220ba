"""Segmentation losses and metrics written with ``keras.ops``.

Every function takes ``(y_true, y_pred)`` NHWC tensors, computes in float32 and returns a
scalar tensor. All are registered with Keras under the ``flexunet`` package, so a model
compiled with them reloads with ``keras.models.load_model`` without ``custom_objects``.

``LOSSES`` and ``METRICS`` map the names used in seed-format configs to these functions;
``get_loss`` and ``get_metrics`` resolve names with a clear error for unknown ones.
"""

import keras
from keras import ops

from flexunet.core.config_reader import brief

__all__ = [
    "EPSILON",
    "binary_crossentropy", "categorical_crossentropy",
    "dice_coef", "dice_loss", "bce_dice_loss",
    "iou_coef", "iou_loss", "bce_iou_loss",
    "binary_accuracy",
    "dice_coef_multiclass", "dice_coef_multiclass_loss",
    "LOSSES", "METRICS", "CUSTOM_OBJECTS", "get_loss", "get_metrics",
]

#: Probabilities are clipped to ``[EPSILON, 1 - EPSILON]`` before taking logarithms, as Keras does.
EPSILON = 1e-7

_register = keras.saving.register_keras_serializable(package="flexunet")


def _as_float(y_true, y_pred):
    """Cast both tensors to float32."""
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


@_register
def binary_crossentropy(y_true, y_pred):
    """Mean binary cross-entropy over all elements, predictions clipped to [eps, 1 - eps]."""
    y_true, y_pred = _as_float(y_true, y_pred)
    y_pred = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    bce = y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred)
    return -ops.mean(bce)


@_register
def categorical_crossentropy(y_true, y_pred):
    """Mean over pixels of ``-sum_c t_c * log(clip(p_c))`` for one-hot NHWC tensors."""
    y_true, y_pred = _as_float(y_true, y_pred)
    y_pred = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return -ops.mean(ops.sum(y_true * ops.log(y_pred), axis=-1))


@_register
def dice_coef(y_true, y_pred, smooth=1.0):
    """Dice coefficient over the whole batch: ``(2 * |T.P| + s) / (|T| + |P| + s)``."""
    y_true, y_pred = _as_float(y_true, y_pred)
    t = ops.reshape(y_true, (-1,))
    p = ops.reshape(y_pred, (-1,))
    intersection = ops.sum(t * p)
    return (2.0 * intersection + smooth) / (ops.sum(t) + ops.sum(p) + smooth)


@_register
def iou_coef(y_true, y_pred, smooth=1.0):
    """Soft IoU per sample over axes (1, 2, 3), averaged over the batch."""
    y_true, y_pred = _as_float(y_true, y_pred)
    axes = (1, 2, 3)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    union = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) - intersection
    return ops.mean((intersection + smooth) / (union + smooth))


@_register
def binary_accuracy(y_true, y_pred, threshold=0.5):
    """Fraction of elements where ``p > threshold`` agrees with ``t > 0.5``."""
    y_true, y_pred = _as_float(y_true, y_pred)
    agree = ops.equal(y_pred > threshold, y_true > 0.5)
    return ops.mean(ops.cast(agree, "float32"))


@_register
def dice_coef_multiclass(y_true, y_pred, smooth=1.0):
    """Mean over classes of the per-class Dice coefficient, each over the whole batch.

    ``y_true`` is one-hot and ``y_pred`` holds class probabilities; the class axis is last.
    """
    y_true, y_pred = _as_float(y_true, y_pred)
    num_classes = ops.shape(y_pred)[-1]
    t = ops.reshape(y_true, (-1, num_classes))
    p = ops.reshape(y_pred, (-1, num_classes))
    intersection = ops.sum(t * p, axis=0)
    per_class = (2.0 * intersection + smooth) / (ops.sum(t, axis=0) + ops.sum(p, axis=0) + smooth)
    return ops.mean(per_class)


# Losses made of the functions above: one complement and one sum each, named as in the configs.


def _named(fn, name, doc):
    """``fn`` under its config ``name``, registered with Keras (saved models refer to that name)."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return _register(fn)


def _one_minus(coef, name):
    """The loss ``1 - coef(y_true, y_pred)``."""
    def loss(y_true, y_pred):
        return 1.0 - coef(y_true, y_pred)
    return _named(loss, name, f"``1 - {coef.__name__}``.")


def _bce_plus(term, name, what):
    """The loss ``binary_crossentropy + term``."""
    def loss(y_true, y_pred):
        return binary_crossentropy(y_true, y_pred) + term(y_true, y_pred)
    return _named(loss, name, f"Binary cross-entropy plus {what} loss.")


dice_loss = _one_minus(dice_coef, "dice_loss")
bce_dice_loss = _bce_plus(dice_loss, "bce_dice_loss", "Dice")
iou_loss = _one_minus(iou_coef, "iou_loss")
bce_iou_loss = _bce_plus(iou_loss, "bce_iou_loss", "IoU")
dice_coef_multiclass_loss = _one_minus(dice_coef_multiclass, "dice_coef_multiclass_loss")


LOSSES = {
    "bce_dice_loss": bce_dice_loss,
    "dice_loss": dice_loss,
    "iou_loss": iou_loss,
    "bce_iou_loss": bce_iou_loss,
    "binary_crossentropy": binary_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "dice_coef_multiclass_loss": dice_coef_multiclass_loss,
}

METRICS = {
    "dice_coef": dice_coef,
    "iou_coef": iou_coef,
    "binary_accuracy": binary_accuracy,
    "accuracy": binary_accuracy,
    "dice_coef_multiclass": dice_coef_multiclass,
    "categorical_crossentropy": categorical_crossentropy,
}

#: Every loss and metric by config name, for ``keras.models.load_model(custom_objects=...)``.
CUSTOM_OBJECTS = {**LOSSES, **METRICS}


def get_loss(name):
    """Return the loss function registered under ``name``.

    Raises:
        ValueError: if ``name`` is not a key of ``LOSSES``.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {brief(name)}; known: {', '.join(sorted(LOSSES))}") from None


def get_metrics(names):
    """Return the metric functions for ``names`` (a list of names, or a single name).

    Raises:
        ValueError: if a name is not a key of ``METRICS``.
    """
    if isinstance(names, str):
        names = [names]
    metrics = []
    for name in names:
        try:
            metrics.append(METRICS[name])
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown metric {brief(name)}; known: {', '.join(sorted(METRICS))}") from None
    return metrics
