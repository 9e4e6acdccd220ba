"""What inference needs to know about a model, stored with the model itself.

An exported ``.onnx`` carries a :class:`ModelInfo` in its ``metadata_props`` (one JSON document
under ``flexunet.info`` plus a few readable keys), so ``flexunet infer model.onnx slides/ -o out/``
needs no config file.  A ``.keras`` model gets the same from the ``train_eval_infer.config`` copy that
training writes beside it.

Metadata read from a file is checked like a config (:meth:`ModelInfo.check`): a value of the wrong
type or range is a :class:`~flexunet.core.errors.ModelError` naming the model file and the key,
raised when the model is loaded, before any image is read or output written.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flexunet.core.config import class_colors, class_names
from flexunet.core.errors import ModelError, first_line
from flexunet.core.preprocess import Preprocess
from flexunet.core.tiling import BLEND_MODES, DEFAULT_BLEND, DEFAULT_OVERLAP, DEFAULT_TILE

METADATA_KEY = "flexunet.info"
SCHEMA_VERSION = 1
_REQUIRED = ("height", "width", "channels", "num_classes")
_TEXT_FIELDS = ("channel_order", "input_name", "output_name", "precision", "source_config", "source_config_path",
                "keras_weights_sha256")


def _shown(value, limit: int = 60) -> str:
    """A metadata value as an error quotes it: as JSON (as the file holds it), cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(value, minimum: int) -> str | None:
    """Why ``value`` is not an integer >= ``minimum`` (None when it is)."""
    return None if _is_int(value) and value >= minimum else f"must be an integer >= {minimum}, got {_shown(value)}"


def _size_pair(value) -> str | None:
    """Why ``value`` is not a ``(height, width)`` pair of positive integers (None when it is)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value)
    return None if ok else f"must be [height, width], two integers >= 1, got {_shown(value)}"


def _rgb_colors(value, labels: int) -> str | None:
    """Why ``value`` is not a list of at least ``labels`` RGB colours (None when it is)."""
    if not isinstance(value, (list, tuple)):
        return f"must be a list of [r, g, b] colours, got {_shown(value)}"
    for i, c in enumerate(value):
        if not (isinstance(c, (list, tuple)) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c)):
            return f"entry {i} must be [r, g, b] with integers 0..255, got {_shown(c)}"
    if len(value) < labels:
        return f"{len(value)} colour(s) for {labels} labels (one per class, background included)"
    return None


def _preprocess(value) -> tuple[Preprocess | None, str | None]:
    """The :class:`Preprocess` a metadata entry describes, or why it is not one."""
    if not isinstance(value, dict):
        return None, f"must be an object, got {_shown(value)}"
    for key, low in (("gamma", 0.0), ("sharpening", 0.0)):
        if key in value and not (_is_number(value[key]) and value[key] >= low):
            return None, f"{key} must be a number >= {low:g}, got {_shown(value[key])}"
    if "scale" in value and not (_is_number(value["scale"]) and value["scale"] > 0):
        return None, f"scale must be a number > 0, got {_shown(value['scale'])}"
    if value.get("color_converter") is not None and not isinstance(value["color_converter"], str):
        return None, f"color_converter must be a name like COLOR_BGR2HSV, got {_shown(value['color_converter'])}"
    try:
        return Preprocess.from_dict(value), None
    except (ValueError, TypeError) as exc:
        return None, first_line(exc, 120)


@dataclass
class ModelInfo:
    height: int | None                 # model input height (None: any multiple of `multiple`)
    width: int | None
    channels: int
    num_classes: int                   # 1 = sigmoid foreground probability, >1 = softmax classes
    multiple: int = 1                  # spatial sizes must be multiples of this (2**(levels-1))
    preprocess: Preprocess = field(default_factory=Preprocess)
    channel_order: str = "BGR"         # order of the input channels (OpenCV decode order) or GRAY
    threshold: float = 0.5
    class_names: list = field(default_factory=lambda: ["background", "foreground"])
    class_colors: list = field(default_factory=lambda: [(0, 0, 0), (255, 255, 255)])  # RGB per class
    tile: tuple | None = None          # default tile (h, w): the training input size
    overlap: int = DEFAULT_OVERLAP
    blend: str = DEFAULT_BLEND
    input_name: str = "image"
    output_name: str = "probabilities"
    precision: str = "fp32"
    source_config: str = ""            # text of the training config
    source_config_path: str = ""
    keras_weights_sha256: str = ""
    versions: dict = field(default_factory=dict)
    mpp: float | None = None           # microns per pixel of the training images (whole slides: the level read)
    measured_overlap: int | None = None  # smallest overlap whose tiles agree with a whole-image pass (export)
    activation_bytes: int | None = None  # bytes per input pixel of the network's intermediate tensors (export)

    @property
    def tile_size(self) -> tuple[int, int]:
        if self.tile:
            return int(self.tile[0]), int(self.tile[1])
        if self.height and self.width:
            return self.height, self.width
        return DEFAULT_TILE, DEFAULT_TILE

    @property
    def labels(self) -> int:
        """Label values a mask can hold: 2 for a binary model (background, foreground), else the classes."""
        return 2 if self.num_classes == 1 else self.num_classes

    # ------------------------------------------------------------------------------------------
    def problems(self):
        """``(key, why)`` for each field whose type or range inference cannot use (first found first)."""
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and _int_at_least(value, 1):
                yield key, f"must be null (any size) or an integer >= 1, got {_shown(value)}"
        for key, low in (("channels", 1), ("num_classes", 1), ("multiple", 1), ("overlap", 0)):
            if _int_at_least(getattr(self, key), low):
                yield key, _int_at_least(getattr(self, key), low)
        if not isinstance(self.preprocess, Preprocess):
            yield "preprocess", f"must be a pre-processing spec, got {_shown(self.preprocess)}"
        elif _is_int(self.channels) and self.preprocess.channels != self.channels:
            yield "channels", (f"{self.channels}, but the pre-processing ('preprocess') gives "
                               f"{self.preprocess.channels} channel(s)")
        if not (_is_number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            yield "threshold", f"must be a number between 0 and 1, got {_shown(self.threshold)}"
        if self.tile is not None and _size_pair(self.tile):
            yield "tile", _size_pair(self.tile)
        if self.blend not in BLEND_MODES:
            yield "blend", f"must be one of {', '.join(BLEND_MODES)}, got {_shown(self.blend)}"
        if not (isinstance(self.class_names, (list, tuple)) and all(isinstance(n, str) for n in self.class_names)):
            yield "class_names", f"must be a list of names, got {_shown(self.class_names)}"
        if _is_int(self.num_classes) and _rgb_colors(self.class_colors, self.labels):
            yield "class_colors", _rgb_colors(self.class_colors, self.labels)
        for key in _TEXT_FIELDS:
            if not isinstance(getattr(self, key), str):
                yield key, f"must be text, got {_shown(getattr(self, key))}"
        if self.mpp is not None and not (_is_number(self.mpp) and self.mpp > 0):
            yield "mpp", f"must be null or a number > 0 (microns per pixel), got {_shown(self.mpp)}"
        for key in ("measured_overlap", "activation_bytes"):
            if getattr(self, key) is not None and _int_at_least(getattr(self, key), 0):
                yield key, f"must be null or an integer >= 0, got {_shown(getattr(self, key))}"
        if not isinstance(self.versions, dict):
            yield "versions", f"must be an object, got {_shown(self.versions)}"

    def check(self, where: str = "model") -> "ModelInfo":
        """This ModelInfo, when every field has a type and range inference can use.

        Raises:
            ModelError: one line naming ``where`` (the model file) and the first bad key.
        """
        for key, why in self.problems():
            raise ModelError(f"{where}: metadata key {key!r}: {why}")
        return self

    # ------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["schema"] = SCHEMA_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "model") -> "ModelInfo":
        """The ModelInfo of a metadata document, checked (:meth:`check`).

        Raises:
            ModelError: not a JSON object, a key missing, or a value of the wrong type or range;
                one line naming ``where`` and the key.
        """
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"{where}: unreadable flexunet metadata ({exc})") from None
        if not isinstance(d, dict):
            raise ModelError(f"{where}: unreadable flexunet metadata (not a JSON object)")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ModelError(f"{where}: flexunet metadata has no key {missing[0]!r}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["preprocess"], why = _preprocess(d.get("preprocess", {}))
        if why:
            raise ModelError(f"{where}: metadata key 'preprocess': {why}")
        if isinstance(known.get("class_colors"), list):
            known["class_colors"] = [tuple(c) if isinstance(c, list) else c for c in known["class_colors"]]
        if isinstance(known.get("tile"), list):
            known["tile"] = tuple(known["tile"])
        return cls(**known).check(where)

    def to_metadata(self) -> dict[str, str]:
        """ONNX metadata_props: the full JSON plus readable summary keys."""
        return {
            METADATA_KEY: self.to_json(),
            "flexunet.input": f"{self.height or 'H'}x{self.width or 'W'}x{self.channels} {self.channel_order} float32 NHWC",
            "flexunet.num_classes": str(self.num_classes),
            "flexunet.class_names": ",".join(self.class_names),
            "flexunet.threshold": str(self.threshold),
            "flexunet.tile": "x".join(str(v) for v in self.tile_size),
            "flexunet.overlap": str(self.overlap),
            "flexunet.precision": self.precision,
            "flexunet.keras_weights_sha256": self.keras_weights_sha256,
        }

    @classmethod
    def from_metadata(cls, props: dict[str, str], where: str = "model") -> "ModelInfo":
        if METADATA_KEY not in props:
            raise ModelError(f"{where}: no flexunet metadata (export it with `flexunet export`)")
        return cls.from_json(props[METADATA_KEY], where)

    @classmethod
    def from_config(cls, cfg, dynamic_size: bool = False, multiple: int | None = None) -> "ModelInfo":
        """What ``cfg`` says about its model; ``multiple`` is what the network's input sizes must be
        a multiple of (``flexunet.architectures.required_multiple``; default the plain UNet's)."""
        m = cfg.model
        try:
            text = Path(cfg.path).read_text(encoding="utf-8")
        except OSError:
            text = ""
        return cls(
            height=None if dynamic_size else m.image_height,
            width=None if dynamic_size else m.image_width,
            channels=m.image_channels,
            num_classes=m.num_classes,
            multiple=multiple if multiple is not None else 2 ** (m.num_layers - 1),
            preprocess=Preprocess.from_config(cfg),
            channel_order="BGR" if m.image_channels == 3 else "GRAY",
            class_names=class_names(cfg),
            class_colors=[tuple(c) for c in class_colors(cfg)],
            tile=(m.image_height, m.image_width),
            overlap=cfg.tiledinfer.overlapping,
            blend=cfg.tiledinfer.blend,
            source_config=text,
            source_config_path=str(cfg.path),
        )
