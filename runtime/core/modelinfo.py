"""What inference needs to know about a model, stored with the model itself.

An exported ``.onnx`` carries a :class:`ModelInfo` in its ``metadata_props`` (one JSON document
under ``flexunet.info`` plus a few readable keys), so ``flexunet infer model.onnx slides/ -o out/``
needs no config file.  A ``.keras`` model gets the same from the ``train_eval_infer.config`` copy that
training writes beside it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flexunet.core.config import class_colors, class_names
from flexunet.core.errors import ModelError
from flexunet.core.preprocess import Preprocess
from flexunet.core.tiling import DEFAULT_BLEND, DEFAULT_OVERLAP, DEFAULT_TILE

METADATA_KEY = "flexunet.info"
SCHEMA_VERSION = 1


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

    @property
    def tile_size(self) -> tuple[int, int]:
        if self.tile:
            return int(self.tile[0]), int(self.tile[1])
        if self.height and self.width:
            return self.height, self.width
        return DEFAULT_TILE, DEFAULT_TILE

    # ------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["schema"] = SCHEMA_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "model") -> "ModelInfo":
        try:
            d = json.loads(text)
            d.pop("schema", None)
            d["preprocess"] = Preprocess.from_dict(d.get("preprocess", {}))
            d["class_colors"] = [tuple(c) for c in d.get("class_colors", [])]
            if d.get("tile") is not None:
                d["tile"] = tuple(d["tile"])
            known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{where}: unreadable flexunet metadata ({exc})") from None

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
    def from_config(cls, cfg, dynamic_size: bool = False) -> "ModelInfo":
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
            multiple=2 ** (m.num_layers - 1),
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
