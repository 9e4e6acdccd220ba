"""Image pre-processing shared by training and inference, described by a small serialisable spec.

Training and every backend feed the model through the same :class:`Preprocess`, and the spec is
stored in the exported model's metadata, so a production box reproduces training exactly.
The model receives float32 NHWC tensors. As in the seed API, ``scale`` is 1/255 only with ``[dataset]
image_normalize`` (default: raw 0..255 pixels); the plain UNet with ``[model] input_normalize`` divides
by 255 in its own Rescaling layer, the seed's other architectures see the pixels as given.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from flexunet.core.config_reader import INTERPOLATIONS

#: OpenCV flag of each interpolation name the config allows ([dataset] resize_interpolation).
INTERPOLATION_FLAGS = {name: getattr(cv2, name) for name in INTERPOLATIONS}


def color_flag(name: str) -> int:
    """OpenCV colour-conversion code for an allow-listed name such as ``COLOR_BGR2HSV``."""
    flag = getattr(cv2, name, None)
    if not name.startswith("COLOR_") or not isinstance(flag, int):
        raise ValueError(f"unknown colour conversion {name!r}")
    return flag


@dataclass(frozen=True)
class Preprocess:
    """How a decoded BGR uint8 image becomes model input.

    channels: 3 (BGR order, the order OpenCV decodes) or 1 (grayscale).
    color_converter: optional OpenCV conversion applied to the BGR image (e.g. ``COLOR_BGR2HSV``).
    gamma: gamma correction exponent (0 = off). sharpening: unsharp-mask amount (0 = off).
    scale: multiplier applied after conversion (1.0 when the model normalises internally).
    """

    channels: int = 3
    color_converter: str | None = None
    gamma: float = 0.0
    sharpening: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.color_converter is not None:
            color_flag(self.color_converter)
        if self.gamma > 0:
            lut = (np.linspace(0.0, 1.0, 256) ** (1.0 / self.gamma) * 255.0).round().astype(np.uint8)
            object.__setattr__(self, "_lut", lut)

    def uint8(self, image: np.ndarray) -> np.ndarray:
        """Colour conversion, gamma and sharpening on the uint8 image (HxWxC out)."""
        img = image
        if img.ndim == 2:
            img = img[..., None]
        if self.channels == 1 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
        elif self.channels == 3 and img.shape[2] == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if self.color_converter is not None:
            img = cv2.cvtColor(img, color_flag(self.color_converter))
            if img.ndim == 2:
                img = img[..., None]
        if self.gamma > 0:
            img = cv2.LUT(img, self._lut)
            if img.ndim == 2:
                img = img[..., None]
        if self.sharpening > 0:
            blur = cv2.GaussianBlur(img, (0, 0), 3)
            img = cv2.addWeighted(img, 1.0 + self.sharpening, blur, -self.sharpening, 0)
            if img.ndim == 2:
                img = img[..., None]
        return img

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """BGR (or gray) uint8 HxW[xC] -> float32 HxWxC model input."""
        out = self.uint8(image).astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: d[k] for k in ("channels", "color_converter", "gamma", "sharpening", "scale") if k in d}
        return cls(**known)

    @classmethod
    def from_config(cls, cfg) -> "Preprocess":
        """The spec a :class:`flexunet.core.config.Config` describes."""
        return cls(
            channels=cfg.model.image_channels,
            color_converter=cfg.image.color_converter,
            gamma=cfg.image.gamma,
            sharpening=cfg.image.sharpening,
            scale=1.0 / 255.0 if cfg.dataset.image_normalize else 1.0,  # as the seed's datasets
        )
