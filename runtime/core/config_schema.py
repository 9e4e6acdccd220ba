"""The config schema: the sections the project uses, their keys, defaults and checks, and the typed
:class:`Config` they make up, with the checks that span keys and the class names and colours a
config implies.

Each field is declared with :func:`~flexunet.core.config_checks.key`: its default, its value check,
the seeds' other spellings of its name (``images_dir`` for ``image_datapath``), and whether it is a
path (resolved against the config's folder) and a dataset input (re-rooted by ``--data-root``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flexunet.core.config_checks import (
    Invalid, boolean, class_color_map, color, integer, integer_list, key, number, number_list, pair,
    path_text, string, string_list, symbol,
)
from flexunet.core.config_reader import COLOR_CONVERSIONS, INTERPOLATIONS, brief
from flexunet.core.errors import ConfigError
from flexunet.core.tiling import BLEND_MODES, DEFAULT_BLEND, DEFAULT_OVERLAP

#: The plain UNet's names (flexunet.architectures.unet): inputs are multiples of 2**(num_layers-1).
UNET_MODEL_NAMES = (
    "TensorflowUNet", "TensorFlowUNet", "TensorFlowFlexUNet", "TensorflowFlexUNet",
    "TensorflowSlightlyFlexibleUNet", "UNet",
)
#: The seed API's other architectures and the Lizard seed's "Flex" family. Which of them flexunet
#: builds, and why not the others, is flexunet.architectures' business (ARCHITECTURES, REFUSED).
SEED_MODEL_NAMES = tuple(
    prefix + arch
    for arch in ("AttentionUNet", "UNet3Plus", "MultiResUNet", "SharpUNet", "DeepLabV3Plus",
                 "EfficientUNet", "EfficientNetB7UNet", "TransUNet", "SwinUNet", "U2Net")
    for prefix in ("Tensorflow", "TensorFlowFlex", "TensorflowFlex")
)
MODEL_NAMES = UNET_MODEL_NAMES + SEED_MODEL_NAMES
EFFICIENTNETS = tuple(f"B{i}" for i in range(8))
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "silu", "swish", "leaky_relu", "tanh", "mish", "relu6")


@dataclass
class ModelConfig:
    model: str = key("TensorflowUNet", string(MODEL_NAMES))
    generator: bool = key(False, boolean)
    image_width: int = key(512, integer(8, 16384))
    image_height: int = key(512, integer(8, 16384))
    image_channels: int = key(3, integer(1, 3))
    num_classes: int = key(1, integer(1, 255))
    base_filters: int = key(16, integer(1, 1024))
    base_kernels: tuple = key((3, 3), pair(1, odd=True, equal=True))
    num_layers: int = key(6, integer(2, 12))
    dilation: tuple = key((1, 1), pair(1, equal=True))
    dropout_rate: float = key(0.05, number(0.0, 1.0, hi_open=True))
    normalization: bool = key(False, boolean)
    input_normalize: bool = key(True, boolean)
    activation: str = key("relu", string(ACTIVATIONS))
    final_activation: str | None = key(None, string(("sigmoid", "softmax"), optional=True))
    learning_rate: float = key(0.0001, number(0.0, 10.0, lo_open=True))
    clipvalue: float | None = key(0.2, number(0.0, None, lo_open=True, optional=True))
    loss: str = key("bce_dice_loss", string())
    metrics: list = key(["dice_coef"], string_list)
    show_summary: bool = key(False, boolean)
    seed: int = key(137, integer(0))
    # TensorflowSharpUNet's widths and first kernel; TensorflowEfficientUNet's backbone
    filters: list | None = key(None, integer_list(1, optional=True))
    max_filter: int = key(512, integer(1, 65536))
    base_ksize: tuple = key((3, 3), pair(1, odd=True, equal=True))
    efficientnet: str = key("B0", string(EFFICIENTNETS))
    # EfficientNet backbones as the seed builds them (for ImageNet weights: a per-channel 1/sqrt(stddev)
    # Rescaling after the Normalization); False for a seed model built with weights=None
    efficientnet_imagenet_scaling: bool = key(True, boolean)


@dataclass
class SplitConfig:
    """A dataset split: image and mask folders, optionally restricted to listed file names."""

    image_datapath: str | None = key(None, path_text(), aliases=("images_dir",), path=True, data=True)
    mask_datapath: str | None = key(None, path_text(), aliases=("masks_dir",), path=True, data=True)
    files: list | None = key(None, string_list)
    exclude_files: list | None = key(None, string_list)


@dataclass
class TrainConfig(SplitConfig):
    epochs: int = key(100, integer(1))
    batch_size: int = key(4, integer(1))
    steps_per_epoch: int | None = key(None, integer(1, optional=True))
    validation_steps: int | None = key(None, integer(1, optional=True))
    patience: int = key(10, integer(0))
    metrics: list = key(["dice_coef", "val_dice_coef"], string_list)
    model_dir: str = key("./models", path_text(False), path=True)
    eval_dir: str = key("./eval", path_text(False), path=True)
    epoch_change_infer: bool = key(False, boolean)
    epoch_change_infer_dir: str = key("./epoch_change_infer", path_text(False), path=True)
    epoch_change_tiledinfer: bool = key(False, boolean)
    epoch_change_tiledinfer_dir: str = key("./epoch_change_tiledinfer", path_text(False), path=True)
    num_infer_images: int = key(1, integer(0))
    create_backup: bool = key(False, boolean)
    learning_rate_reducer: bool = key(True, boolean)
    reducer_factor: float = key(0.1, number(0.0, 1.0, lo_open=True, hi_open=True))
    reducer_patience: int = key(4, integer(0))
    save_weights_only: bool = key(False, boolean)
    validation_split: float = key(0.2, number(0.0, 0.9))
    seed: int | None = key(None, integer(0, optional=True))
    max_minutes: float | None = key(None, number(0.0, None, lo_open=True, optional=True))


@dataclass
class InferConfig:
    images_dir: str | None = key(None, path_text(), path=True, data=True)
    masks_dir: str | None = key(None, path_text(), path=True, data=True)
    output_dir: str | None = key(None, path_text(), path=True)
    merged_dir: str | None = key(None, path_text(), path=True)
    files: list | None = key(None, string_list)
    sharpening: bool = key(False, boolean)


@dataclass
class TiledInferConfig(InferConfig):
    overlapping: int = key(DEFAULT_OVERLAP, integer(0))
    blend: str = key(DEFAULT_BLEND, string(BLEND_MODES))
    batch_size: int = key(4, integer(1))


@dataclass
class SegmentationConfig:
    colorize: bool = key(False, boolean)
    black: tuple = key((0, 0, 0), color)
    white: tuple = key((255, 255, 255), color)
    blursize: tuple | None = key(None, pair(1, optional=True))


@dataclass
class ImageConfig:
    color_converter: str | None = key(None, symbol(COLOR_CONVERSIONS))
    gamma: float = key(0.0, number(0.0))
    sharpening: float = key(0.0, number(0.0))


@dataclass
class MaskConfig:
    blur: bool = key(False, boolean)
    blur_size: tuple = key((3, 3), pair(1, odd=True))
    binarize: bool = key(True, boolean)
    threshold: int = key(128, integer(0, 255))
    rgb_map: dict | None = key(None, class_color_map)
    class_names: list | None = key(None, string_list)


@dataclass
class DatasetConfig:
    datasetclass: str = key("ImageMaskDataset", string())
    resize_interpolation: str = key("INTER_LINEAR", symbol(INTERPOLATIONS))
    tiling: bool = key(False, boolean)
    tile_overlap: int = key(0, integer(0))
    max_tiles_per_image: int | None = key(None, integer(1, optional=True))
    # the seed's: divide images by 255 before the network (its default: raw 0..255 pixels; the plain
    # UNet divides inside the network when [model] input_normalize, the other architectures never do)
    image_normalize: bool = key(False, boolean)


@dataclass
class GeneratorConfig:
    augmentation: bool = key(True, boolean)
    vflip: bool = key(True, boolean)
    hflip: bool = key(True, boolean)
    rotation: bool = key(True, boolean)
    angles: list = key([90.0, 180.0, 270.0], number_list)


def _numbers(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """A list of numbers, each within ``number``'s bounds."""
    one = number(lo, hi, lo_open=lo_open)

    def check(v):
        values = number_list(v)
        for x in values:
            one(x)
        return values
    return check


def _centers(v):
    """A non-empty list of ``(x, y)`` centres, fractions of the width and height in [0, 1]."""
    if (not isinstance(v, (list, tuple)) or not v or any(
            not isinstance(c, (list, tuple)) or len(c) != 2 or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1 for x in c)
            for c in v)):
        raise Invalid(f"expected a list of (x, y) fractions in [0, 1] like [(0.5, 0.5)], got {brief(v)}")
    return [(float(x), float(y)) for x, y in v]


@dataclass
class AugmentorConfig:
    """The seed's [augmentor] switches (flexunet.train.augment). hflip, vflip, rotation and angles
    fall back to [generator]'s keys of the same names where [augmentor] does not give them."""

    vflip: bool = key(True, boolean)
    hflip: bool = key(True, boolean)
    rotation: bool = key(True, boolean)
    angles: list = key([90.0, 180.0, 270.0], _numbers(-360.0, 360.0))
    shrinks: list = key([0.8], _numbers(0.0, 1.0, lo_open=True))
    shears: list = key([], _numbers(-1.0, 1.0))
    deformation: bool = key(False, boolean)
    distortion: bool = key(False, boolean)
    barrdistortion: bool = key(False, boolean)
    pincdistortion: bool = key(False, boolean)
    sharpening: bool = key(False, boolean)
    brightening: bool = key(False, boolean)


@dataclass
class DeformationConfig:
    """Elastic deformation: displacement = gaussian(uniform noise, sigmoid) * alpah (the seed's spelling)."""

    alpah: float = key(1300.0, number(0.0, 1e5, lo_open=True), aliases=("alpha",))
    sigmoid: float = key(8.0, number(0.0, 100.0, lo_open=True))
    sigmoids: list | None = key(None, lambda v: None if v is None else _numbers(0.0, 100.0, lo_open=True)(v))


@dataclass
class DistortionConfig:
    gaussian_filter_rsigma: float = key(40.0, number(0.0, 1000.0, lo_open=True))
    gaussian_filter_sigma: float = key(0.5, number(0.0, 100.0))
    distortions: list = key([0.02], _numbers(0.0, 0.5, lo_open=True))


@dataclass
class BarrDistortionConfig:
    radius: float = key(0.5, number(0.0, 2.0, lo_open=True))
    amount: float = key(0.5, number(-10.0, 10.0))
    centers: list = key([(0.5, 0.5)], _centers)


@dataclass
class PincDistortionConfig(BarrDistortionConfig):
    amount: float = key(-0.5, number(-10.0, 10.0))


@dataclass
class SharpeningConfig:
    k: float = key(1.0, number(0.0, 100.0))


@dataclass
class BrighteningConfig:
    alpha: float = key(1.2, number(0.0, 100.0, lo_open=True))
    beta: float = key(10.0, number(-255.0, 255.0))


#: Each section the project uses and its type ([eval] is also read from the seeds' [valid]).
SECTION_TYPES = {
    "model": ModelConfig, "train": TrainConfig, "eval": SplitConfig, "test": SplitConfig,
    "infer": InferConfig, "tiledinfer": TiledInferConfig, "segmentation": SegmentationConfig,
    "image": ImageConfig, "mask": MaskConfig, "dataset": DatasetConfig, "generator": GeneratorConfig,
    "augmentor": AugmentorConfig, "deformation": DeformationConfig, "distortion": DistortionConfig,
    "barrdistortion": BarrDistortionConfig, "pincdistortion": PincDistortionConfig,
    "sharpening": SharpeningConfig, "brightening": BrighteningConfig,
}


@dataclass
class Config:
    """A parsed, validated config. Paths are absolute :class:`pathlib.Path` objects (or None)."""

    path: Path
    model: ModelConfig
    train: TrainConfig
    eval: SplitConfig
    test: SplitConfig
    infer: InferConfig
    tiledinfer: TiledInferConfig
    segmentation: SegmentationConfig
    image: ImageConfig
    mask: MaskConfig
    dataset: DatasetConfig
    generator: GeneratorConfig
    augmentor: AugmentorConfig = field(default_factory=AugmentorConfig)
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    distortion: DistortionConfig = field(default_factory=DistortionConfig)
    barrdistortion: BarrDistortionConfig = field(default_factory=BarrDistortionConfig)
    pincdistortion: PincDistortionConfig = field(default_factory=PincDistortionConfig)
    sharpening: SharpeningConfig = field(default_factory=SharpeningConfig)
    brightening: BrighteningConfig = field(default_factory=BrighteningConfig)
    data_root: Path | None = None
    raw: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def seed(self) -> int:
        return self.train.seed if self.train.seed is not None else self.model.seed

    @property
    def multiclass(self) -> bool:
        return self.model.num_classes > 1

    def error(self, section: str, key: str, message: str) -> ConfigError:
        """A one-line ConfigError naming this file, the section and the key."""
        return ConfigError(f"{self.path}: [{section}] {key}: {message}")


def check_consistency(cfg: Config) -> None:
    """The checks that span keys: input size vs depth, rgb_map vs num_classes, class_names count."""
    m = cfg.model
    multiple = 2 ** (m.num_layers - 1) if m.model in UNET_MODEL_NAMES else 1  # others: their builder
    for name in ("image_height", "image_width"):
        v = getattr(m, name)
        if v % multiple:
            raise cfg.error("model", name, f"{v} is not a multiple of 2**(num_layers-1) = {multiple} "
                            f"(num_layers = {m.num_layers})")
    if cfg.mask.rgb_map is not None:
        classes = sorted(set(cfg.mask.rgb_map.values()))
        if classes != list(range(m.num_classes)):
            raise cfg.error("mask", "rgb_map", f"class indices {classes} do not match "
                            f"num_classes = {m.num_classes} (expected 0..{m.num_classes - 1})")
    elif m.num_classes > 1:
        raise cfg.error("mask", "rgb_map", f"num_classes = {m.num_classes} needs an rgb_map "
                        "{(r,g,b): class, ...} to read categorised masks")
    if cfg.mask.class_names is not None:
        n = len(cfg.mask.class_names)
        # one class: either the foreground's name, or background and foreground
        if n != m.num_classes and not (m.num_classes == 1 and n == 2):
            raise cfg.error("mask", "class_names", f"{n} names for num_classes = {m.num_classes}")


def class_colors(cfg: Config) -> list[tuple[int, int, int]]:
    """RGB colour of each class index: from rgb_map, else [segmentation] black/white for binary."""
    if cfg.mask.rgb_map:
        colors = [(0, 0, 0)] * cfg.model.num_classes
        for rgb, c in cfg.mask.rgb_map.items():
            colors[c] = rgb
        return colors
    return [cfg.segmentation.black, cfg.segmentation.white]


def class_names(cfg: Config) -> list[str]:
    """Name of each class index, as many as :func:`class_colors` gives: [mask] class_names, else
    ``background`` and ``foreground`` (binary) or ``class_<i>``."""
    names = list(cfg.mask.class_names or [])
    if cfg.model.num_classes == 1:
        return names if len(names) == 2 else ["background", names[0] if names else "foreground"]
    if names:
        return names
    return ["background"] + [f"class_{i}" for i in range(1, cfg.model.num_classes)]
