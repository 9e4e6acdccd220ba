"""Training augmentation: the config's ``[augmentor]`` as random transforms inside the tf.data pipeline.

Keys (the seed's ImageMaskAugmentor names and defaults; sections ``[augmentor]``, ``[deformation]``,
``[distortion]``, ``[barrdistortion]``, ``[pincdistortion]``, ``[sharpening]``, ``[brightening]``):

  hflip, vflip        each sample is flipped left-right / up-down with probability 1/2
  rotation, angles    rotate about the centre by one angle (degrees) drawn from ``angles``
  shrinks             shrink about the centre by one factor drawn from the list (seed default [0.8])
  shears              vertical shear about the centre by one factor drawn from the list
  deformation         elastic field: gaussian(uniform noise, one of ``sigmoids`` or ``sigmoid``) * ``alpah``
  distortion          gradient of gaussian(normal noise, ``gaussian_filter_rsigma``) scaled to one of
                      ``distortions`` x the image side; the image is blurred by ``gaussian_filter_sigma``
  barrdistortion      radial warp around one of ``centers`` (fractions) within ``radius`` x width,
  pincdistortion        sin(pi r / 2R) ** ``amount`` (barrel: amount > 0, pincushion: amount < 0)
  sharpening          3x3 sharpening kernel of strength ``k`` (image only)
  brightening         ``alpha`` * pixel + ``beta`` (0-255 units, clipped; image only)

The seed writes one extra copy of a sample per transform; here each training sample gets the flips
(independently) and then one transform drawn uniformly from "none" and the enabled ones, so a
sample is left as it is as often as in the seed's set. Geometric transforms move image and mask
together: bilinear for the image, nearest neighbour for the mask (class indices are kept exactly),
borders reflected for both. Flips and brightening are TensorFlow ops; the others run in OpenCV
(:mod:`flexunet.train.augment_ops`, which says why not Keras' layers) through ``tf.numpy_function``
in the parallel map of the input pipeline. Randomness is stateless: sample ``i`` of a training
run gets the same transform for the same config seed, whatever the pipeline's parallelism.

Where ``[augmentor]`` does not give hflip, vflip, rotation or angles, ``[generator]``'s keys apply;
``shrinks`` applies only when the config has an ``[augmentor]`` section (configs with only
``[generator]`` keep their flips and rotations). Augmentation is on with ``[model] generator`` and
``[generator] augmentation``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexunet.core.config import Config
from flexunet.train import augment_ops as ops

LEGACY_KEYS = ("hflip", "vflip", "rotation", "angles")
AFFINE = ("rotation", "shrink", "shear")
FIELDS = ("deformation", "distortion", "barrdistortion", "pincdistortion")


@dataclass(frozen=True)
class AugmentSettings:
    """What augmentation a config asks for; an empty tuple turns a transform off."""

    hflip: bool = False
    vflip: bool = False
    angles: tuple = ()
    shrinks: tuple = ()
    shears: tuple = ()
    deformation: tuple = ()     # (alpha, (sigma, ...))
    distortion: tuple = ()      # (rsigma, sigma, (size, ...))
    barrdistortion: tuple = ()  # (radius, amount, ((cx, cy), ...))
    pincdistortion: tuple = ()
    sharpening: tuple = ()      # (k,)
    brightening: tuple = ()     # (alpha, beta)

    @classmethod
    def from_config(cls, cfg: Config) -> "AugmentSettings":
        a, raw = cfg.augmentor, cfg.raw.get("augmentor", {})
        own = {k: getattr(a if k in raw else cfg.generator, k) for k in LEGACY_KEYS}
        d, t, b, p = cfg.deformation, cfg.distortion, cfg.barrdistortion, cfg.pincdistortion
        return cls(
            hflip=own["hflip"], vflip=own["vflip"],
            angles=tuple(own["angles"]) if own["rotation"] else (),
            shrinks=tuple(a.shrinks) if "augmentor" in cfg.raw else (),
            shears=tuple(a.shears),
            deformation=(d.alpah, tuple(d.sigmoids or [d.sigmoid])) if a.deformation else (),
            distortion=(t.gaussian_filter_rsigma, t.gaussian_filter_sigma, tuple(t.distortions))
            if a.distortion and t.distortions else (),
            barrdistortion=(b.radius, b.amount, tuple(b.centers)) if a.barrdistortion else (),
            pincdistortion=(p.radius, p.amount, tuple(p.centers)) if a.pincdistortion else (),
            sharpening=(cfg.sharpening.k,) if a.sharpening else (),
            brightening=(cfg.brightening.alpha, cfg.brightening.beta) if a.brightening else (),
        )

    @property
    def transforms(self) -> list[str]:
        """The enabled transforms one of which (or none) each sample gets, in a fixed order."""
        names = {"rotation": self.angles, "shrink": self.shrinks, "shear": self.shears}
        names.update({n: getattr(self, n) for n in FIELDS + ("sharpening", "brightening")})
        return [n for n, v in names.items() if v]

    @property
    def enabled(self) -> bool:
        return self.hflip or self.vflip or bool(self.transforms)

    def describe(self) -> str:
        parts = [n for n in ("hflip", "vflip") if getattr(self, n)] + self.transforms
        return ", ".join(parts) or "nothing"


def augmentation_on(cfg: Config) -> bool:
    """Whether training augments: ``[model] generator`` and ``[generator] augmentation``."""
    return bool(cfg.model.generator and cfg.generator.augmentation)


def make_augmenter(cfg: Config, channels: int, value_max: float) -> "Augmenter | None":
    """The config's augmenter, or None when augmentation is off or selects nothing."""
    settings = AugmentSettings.from_config(cfg)
    if not augmentation_on(cfg) or not settings.enabled:
        return None
    return Augmenter(settings, cfg.model.image_height, cfg.model.image_width, channels, cfg.seed,
                     value_max)


class Augmenter:
    """A tf.data map function ``(index, x, y) -> (x, y)``: sample ``index``'s random transform.

    ``x`` is the model input (HxWxC float32, pixel values up to ``value_max``), ``y`` the target
    (HxWx1 0/1 or HxWxK one-hot float32)."""

    def __init__(self, settings: AugmentSettings, height: int, width: int, channels: int, seed: int,
                 value_max: float = 255.0):
        self.s, self.h, self.w, self.c = settings, height, width, channels
        self.seed, self.vmax = int(seed), float(value_max)
        self.names = settings.transforms
        self.radial = {n: [ops.radial_field(height, width, c, getattr(settings, n)[0],
                                            getattr(settings, n)[1]) for c in getattr(settings, n)[2]]
                       for n in ("barrdistortion", "pincdistortion") if getattr(settings, n)}

    # -- the graph -----------------------------------------------------------------------
    def __call__(self, index, x, y):
        import tensorflow as tf

        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(index, tf.int64)])
        u = tf.random.stateless_uniform([3], seed=seed)
        np_seed = tf.random.stateless_uniform([], seed=seed + 1, minval=0, maxval=2 ** 31 - 1,
                                              dtype=tf.int64)
        if self.s.hflip:
            x, y = tf.cond(u[0] < 0.5, lambda: (tf.reverse(x, [1]), tf.reverse(y, [1])), lambda: (x, y))
        if self.s.vflip:
            x, y = tf.cond(u[1] < 0.5, lambda: (tf.reverse(x, [0]), tf.reverse(y, [0])), lambda: (x, y))
        if not self.names:
            return x, y
        which = tf.minimum(tf.cast(u[2] * (len(self.names) + 1), tf.int32), len(self.names))
        branches = [self._branch(n, x, y, np_seed) for n in self.names] + [lambda: (x, y)]
        x2, y2 = tf.switch_case(which, branches)
        x2.set_shape(x.shape)
        y2.set_shape(y.shape)
        return x2, y2

    def _branch(self, name, x, y, np_seed):
        import tensorflow as tf

        if name == "brightening":
            alpha, beta = self.s.brightening
            return lambda: (tf.clip_by_value(x * alpha + beta * self.vmax / 255.0, 0.0, self.vmax), y)

        def warp():
            return tuple(tf.numpy_function(lambda a, b, s: self.warp_numpy(name, a, b, int(s)),
                                           [x, y, np_seed], [tf.float32, tf.float32], stateful=False))
        return warp

    # -- NumPy side (OpenCV) ---------------------------------------------------------------
    def warp_numpy(self, name: str, x: np.ndarray, y: np.ndarray, seed: int):
        """Transform ``name`` of one sample, its parameters drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        h, w = x.shape[:2]
        if name in AFFINE:
            values = {"rotation": self.s.angles, "shrink": self.s.shrinks, "shear": self.s.shears}[name]
            value = values[rng.integers(len(values))]
            if name == "rotation" and value % 90 == 0 and (h == w or value % 180 == 0):
                k = int(value // 90) % 4  # exact, no interpolation
                return np.ascontiguousarray(np.rot90(x, k)), np.ascontiguousarray(np.rot90(y, k))
            return ops.warp_affine_pair(x, y, ops.affine_matrix(name, value, h, w))
        if name == "sharpening":
            return ops.sharpen(x, self.s.sharpening[0], self.vmax), y
        if name == "deformation":
            alpha, sigmas = self.s.deformation
            fx, fy = ops.elastic_field(rng, h, w, alpha, sigmas[rng.integers(len(sigmas))])
        elif name == "distortion":
            rsigma, sigma, sizes = self.s.distortion
            fx, fy = ops.distortion_field(rng, h, w, rsigma, sizes[rng.integers(len(sizes))])
            x = ops.blur(x, sigma)
        else:
            fields = self.radial[name]
            fx, fy = fields[rng.integers(len(fields))]
        return ops.remap_pair(x, y, fx, fy)
