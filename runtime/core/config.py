"""Read the seeds' ``train_eval_infer.config`` files safely into a typed :class:`Config`.

The format is INI sections whose values are Python literals.  Values are parsed with
:func:`ast.literal_eval` only, plus an explicit allow-list of the symbolic OpenCV names the seeds
write (``cv2.COLOR_BGR2HSV``, ``cv2.INTER_CUBIC`` ...); nothing is ever ``eval``-ed.

Rules, in the order they apply to each key the project uses:

* a value that is not a Python literal (the seeds ship ``generator = Flase`` and
  ``angles = [90. 180, 270,]``) gives one warning naming the file, line, section and key, and the
  key takes its default;
* a literal of the wrong type or outside its range is a :class:`~runtime.errors.ConfigError`: one
  line naming file, section and key (exit code 2);
* keys the project does not use are kept in ``Config.raw`` and otherwise ignored.

Both spellings the seeds use are accepted: ``[eval]`` or ``[valid]``, ``image_datapath`` /
``mask_datapath`` or ``images_dir`` / ``masks_dir``.  Relative paths resolve against the config
file's folder; with ``data_root`` the dataset input paths are re-rooted there instead (see
:func:`reroot`).
"""
from __future__ import annotations

import ast
import logging
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from flexunet.core.errors import ConfigError
from flexunet.core.tiling import BLEND_MODES

log = logging.getLogger("flexunet")

CONFIG_FILENAME = "train_eval_infer.config"

# --------------------------------------------------------------------------------------------
# Symbolic names the seeds write; the allow-list maps each to a portable name (no cv2 import here).
COLOR_CONVERSIONS = (
    "COLOR_BGR2RGB", "COLOR_RGB2BGR", "COLOR_BGR2GRAY", "COLOR_RGB2GRAY",
    "COLOR_BGR2HSV", "COLOR_BGR2HSV_FULL", "COLOR_RGB2HSV", "COLOR_RGB2HSV_FULL",
    "COLOR_BGR2HLS", "COLOR_BGR2HLS_FULL", "COLOR_BGR2LAB", "COLOR_RGB2LAB",
    "COLOR_BGR2LUV", "COLOR_BGR2YUV", "COLOR_BGR2YCrCb", "COLOR_BGR2XYZ",
)
INTERPOLATIONS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC", "INTER_AREA", "INTER_LANCZOS4")
SYMBOLS = {f"cv2.{n}": n for n in COLOR_CONVERSIONS + INTERPOLATIONS}

UNET_MODEL_NAMES = (
    "TensorflowUNet", "TensorFlowUNet", "TensorFlowFlexUNet", "TensorflowFlexUNet",
    "TensorflowSlightlyFlexibleUNet", "UNet",
)
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "silu", "swish", "leaky_relu", "tanh", "mish", "relu6")

# Named colours accepted by [segmentation] black/white (RGB).
NAMED_COLORS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
    "orange": (255, 165, 0), "purple": (128, 0, 128), "gray": (128, 128, 128), "grey": (128, 128, 128),
}

_MISSING = object()


class _Unparsable:
    """Marker for a value ``ast.literal_eval`` refused; carries the text and its line."""

    def __init__(self, text: str, line: int, reason: str):
        self.text, self.line, self.reason = text, line, reason


# --------------------------------------------------------------------------------------------
# Reading the INI structure (own reader: we need line numbers for the warnings).


@dataclass
class _RawValue:
    text: str
    line: int


def _read_sections(path: Path) -> dict[str, dict[str, _RawValue]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (cannot decode as UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None

    sections: dict[str, dict[str, _RawValue]] = {}
    current: dict[str, _RawValue] | None = None
    last_key: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if line[0] in " \t" and current is not None and last_key is not None:
            # continuation of the previous value (multi-line dicts and lists)
            current[last_key].text += "\n" + _strip_inline_comment(stripped)
            continue
        if stripped.startswith("["):
            end = stripped.find("]")
            if end < 0:
                raise ConfigError(f"{path}:{lineno}: malformed section header {stripped!r}")
            name = stripped[1:end].strip().lower()
            current = sections.setdefault(name, {})
            last_key = None
            continue
        if current is None:
            raise ConfigError(f"{path}:{lineno}: a value outside any [section]: {stripped!r}")
        key, sep, value = stripped.partition("=")
        if not sep:
            key, sep, value = stripped.partition(":")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected 'key = value', got {stripped!r}")
        key = key.strip().lower()
        current[key] = _RawValue(_strip_inline_comment(value.strip()), lineno)
        last_key = key
    return sections


def _strip_inline_comment(value: str) -> str:
    """Drop a trailing ``; comment`` (preceded by whitespace) outside quotes."""
    quote = None
    escaped = False
    for i, ch in enumerate(value):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ";" and i > 0 and value[i - 1] in " \t":
            return value[:i].rstrip()
    return value


def _parse_literal(raw: _RawValue) -> Any:
    text = raw.text
    if text == "":
        return _Unparsable(text, raw.line, "empty value")
    bare = text.split("#", 1)[0].strip()  # a symbol may carry a trailing '# comment'
    if bare in SYMBOLS:
        return bare
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        reason = "not a Python literal"
        if isinstance(exc, SyntaxError) and exc.msg:
            reason += f" ({exc.msg})"
        return _Unparsable(text, raw.line, reason)


# --------------------------------------------------------------------------------------------
# Typed sections. Each field's metadata holds its validator ("check") and optional seed aliases.


def _f(default: Any, check: Callable[[Any], Any] | None = None, *, aliases: tuple[str, ...] = (),
       path: bool = False, data: bool = False):
    meta = {"check": check, "aliases": aliases, "path": path, "data": data}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


class _Invalid(ValueError):
    pass


def _int(lo: int | None = None, hi: int | None = None, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(f"expected an integer, got {v!r}")
        if lo is not None and v < lo:
            raise _Invalid(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise _Invalid(f"must be <= {hi}, got {v}")
        return v
    return check


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Invalid(f"expected a number, got {v!r}")
        v = float(v)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise _Invalid(f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise _Invalid(f"must be {'<' if hi_open else '<='} {hi}, got {v}")
        return v
    return check


def _bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _Invalid(f"expected True or False, got {v!r}")


def _str(choices: tuple[str, ...] | None = None, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise _Invalid(f"expected a quoted string, got {v!r}")
        if choices is not None and v not in choices:
            match = {c.lower(): c for c in choices}.get(v.lower())
            if match is None:
                raise _Invalid(f"{v!r} is not one of {', '.join(choices)}")
            return match
        return v
    return check


def _path(optional: bool = True):
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v.strip():
            raise _Invalid(f"expected a quoted path, got {v!r}")
        return v
    return check


def _pair(lo: int = 1, odd: bool = False, equal: bool = False, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v, v)
        if (not isinstance(v, (tuple, list)) or len(v) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in v)):
            raise _Invalid(f"expected a pair of integers like (3,3), got {v!r}")
        v = (int(v[0]), int(v[1]))
        if min(v) < lo:
            raise _Invalid(f"values must be >= {lo}, got {v}")
        if odd and (v[0] % 2 == 0 or v[1] % 2 == 0):
            raise _Invalid(f"kernel sizes must be odd, got {v}")
        if equal and v[0] != v[1]:
            raise _Invalid(f"both values must be equal, got {v}")
        return v
    return check


def _str_list(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise _Invalid(f"expected a list of quoted strings, got {v!r}")
    return list(v)


def _num_list(v):
    if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise _Invalid(f"expected a list of numbers, got {v!r}")
    return [float(x) for x in v]


def _symbol(names: tuple[str, ...]):
    def check(v):
        if v is None:
            return None
        if isinstance(v, str):
            name = v[4:] if v.startswith("cv2.") else v
            if name in names:
                return name
        raise _Invalid(f"{v!r} is not one of the allowed names: " + ", ".join("cv2." + n for n in names))
    return check


def _color(v):
    if isinstance(v, str):
        if v.lower() in NAMED_COLORS:
            return NAMED_COLORS[v.lower()]
        m = re.fullmatch(r"#([0-9a-fA-F]{6})", v)
        if m:
            h = m.group(1)
            return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))
    if (isinstance(v, (tuple, list)) and len(v) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in v)):
        return tuple(v)
    raise _Invalid(f"expected a colour name, '#rrggbb' or an (r,g,b) tuple, got {v!r}")


def _rgb_map(v):
    if v is None:
        return None
    if not isinstance(v, dict) or not v:
        raise _Invalid(f"expected a dict {{(r,g,b): class_index, ...}}, got {v!r}")
    out: dict[tuple[int, int, int], int] = {}
    for k, c in v.items():
        rgb = _color(k)
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise _Invalid(f"class index for {k!r} must be an integer >= 0, got {c!r}")
        out[rgb] = c
    return out


@dataclass
class ModelConfig:
    model: str = _f("TensorflowUNet", _str(UNET_MODEL_NAMES))
    generator: bool = _f(False, _bool)
    image_width: int = _f(512, _int(8, 16384))
    image_height: int = _f(512, _int(8, 16384))
    image_channels: int = _f(3, _int(1, 3))
    num_classes: int = _f(1, _int(1, 255))
    base_filters: int = _f(16, _int(1, 1024))
    base_kernels: tuple = _f((3, 3), _pair(1, odd=True, equal=True))
    num_layers: int = _f(6, _int(2, 12))
    dilation: tuple = _f((1, 1), _pair(1, equal=True))
    dropout_rate: float = _f(0.05, _float(0.0, 1.0, hi_open=True))
    normalization: bool = _f(False, _bool)
    input_normalize: bool = _f(True, _bool)
    activation: str = _f("relu", _str(ACTIVATIONS))
    final_activation: str | None = _f(None, _str(("sigmoid", "softmax"), optional=True))
    learning_rate: float = _f(0.0001, _float(0.0, 10.0, lo_open=True))
    clipvalue: float | None = _f(0.2, _float(0.0, None, lo_open=True, optional=True))
    loss: str = _f("bce_dice_loss", _str())
    metrics: list = _f(["dice_coef"], _str_list)
    show_summary: bool = _f(False, _bool)
    seed: int = _f(137, _int(0))


@dataclass
class SplitConfig:
    """A dataset split: image and mask folders, optionally restricted to listed file names."""

    image_datapath: str | None = _f(None, _path(), aliases=("images_dir",), path=True, data=True)
    mask_datapath: str | None = _f(None, _path(), aliases=("masks_dir",), path=True, data=True)
    files: list | None = _f(None, _str_list)
    exclude_files: list | None = _f(None, _str_list)


@dataclass
class TrainConfig(SplitConfig):
    epochs: int = _f(100, _int(1))
    batch_size: int = _f(4, _int(1))
    steps_per_epoch: int | None = _f(None, _int(1, optional=True))
    validation_steps: int | None = _f(None, _int(1, optional=True))
    patience: int = _f(10, _int(0))
    metrics: list = _f(["dice_coef", "val_dice_coef"], _str_list)
    model_dir: str = _f("./models", _path(False), path=True)
    eval_dir: str = _f("./eval", _path(False), path=True)
    epoch_change_infer: bool = _f(False, _bool)
    epoch_change_infer_dir: str = _f("./epoch_change_infer", _path(False), path=True)
    epoch_change_tiledinfer: bool = _f(False, _bool)
    epoch_change_tiledinfer_dir: str = _f("./epoch_change_tiledinfer", _path(False), path=True)
    num_infer_images: int = _f(1, _int(0))
    create_backup: bool = _f(False, _bool)
    learning_rate_reducer: bool = _f(True, _bool)
    reducer_factor: float = _f(0.1, _float(0.0, 1.0, lo_open=True, hi_open=True))
    reducer_patience: int = _f(4, _int(0))
    save_weights_only: bool = _f(False, _bool)
    validation_split: float = _f(0.2, _float(0.0, 0.9))
    seed: int | None = _f(None, _int(0, optional=True))
    max_minutes: float | None = _f(None, _float(0.0, None, lo_open=True, optional=True))


@dataclass
class InferConfig:
    images_dir: str | None = _f(None, _path(), path=True, data=True)
    masks_dir: str | None = _f(None, _path(), path=True, data=True)
    output_dir: str | None = _f(None, _path(), path=True)
    merged_dir: str | None = _f(None, _path(), path=True)
    files: list | None = _f(None, _str_list)
    sharpening: bool = _f(False, _bool)


@dataclass
class TiledInferConfig(InferConfig):
    overlapping: int = _f(64, _int(0))
    blend: str = _f("cosine", _str(BLEND_MODES))
    batch_size: int = _f(4, _int(1))


@dataclass
class SegmentationConfig:
    colorize: bool = _f(False, _bool)
    black: tuple = _f((0, 0, 0), _color)
    white: tuple = _f((255, 255, 255), _color)
    blursize: tuple | None = _f(None, _pair(1, optional=True))


@dataclass
class ImageConfig:
    color_converter: str | None = _f(None, _symbol(COLOR_CONVERSIONS))
    gamma: float = _f(0.0, _float(0.0))
    sharpening: float = _f(0.0, _float(0.0))


@dataclass
class MaskConfig:
    blur: bool = _f(False, _bool)
    blur_size: tuple = _f((3, 3), _pair(1, odd=True))
    binarize: bool = _f(True, _bool)
    threshold: int = _f(128, _int(0, 255))
    rgb_map: dict | None = _f(None, _rgb_map)
    class_names: list | None = _f(None, _str_list)


@dataclass
class DatasetConfig:
    datasetclass: str = _f("ImageMaskDataset", _str())
    resize_interpolation: str = _f("INTER_LINEAR", _symbol(INTERPOLATIONS))
    tiling: bool = _f(False, _bool)
    tile_overlap: int = _f(0, _int(0))
    max_tiles_per_image: int | None = _f(None, _int(1, optional=True))


@dataclass
class GeneratorConfig:
    augmentation: bool = _f(True, _bool)
    vflip: bool = _f(True, _bool)
    hflip: bool = _f(True, _bool)
    rotation: bool = _f(True, _bool)
    angles: list = _f([90.0, 180.0, 270.0], _num_list)


_SECTION_TYPES = {
    "model": ModelConfig, "train": TrainConfig, "eval": SplitConfig, "test": SplitConfig,
    "infer": InferConfig, "tiledinfer": TiledInferConfig, "segmentation": SegmentationConfig,
    "image": ImageConfig, "mask": MaskConfig, "dataset": DatasetConfig, "generator": GeneratorConfig,
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


# --------------------------------------------------------------------------------------------

_warned: set[tuple[str, str, str, int]] = set()


def _warn(config_path: Path, section: str, key: str, bad: _Unparsable, default: Any,
          sink: list[str]) -> None:
    msg = (f"{config_path}:{bad.line}: [{section}] {key} = {bad.text!r}: {bad.reason}; "
           f"using the default {default!r}")
    sink.append(msg)
    ident = (str(config_path.resolve()), section, key, bad.line)
    if ident not in _warned:
        _warned.add(ident)
        log.warning(msg)


def reroot(path: str, data_root: Path) -> Path:
    """Re-root a relative dataset path under ``data_root``.

    Leading ``.`` and ``..`` components are dropped, and so is a leading ``dataset`` folder (the
    seeds' convention ``../../../dataset/<Name>/train/images``), so
    ``../../../dataset/Tiled-MultipleMyeloma/images`` becomes ``<data_root>/Tiled-MultipleMyeloma/images``.
    Absolute paths are returned unchanged.
    """
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute():
        return Path(path)
    parts = [x for x in p.parts]
    while parts and parts[0] in (".", ".."):
        parts.pop(0)
    if parts and parts[0] == "dataset":
        parts.pop(0)
    return Path(data_root, *parts)


def _build_section(cls, name: str, values: dict[str, Any], config_path: Path,
                   data_root: Path | None, sink: list[str]):
    kwargs = {}
    for f in fields(cls):
        check = f.metadata.get("check")
        value = _MISSING
        for key in (f.name, *f.metadata.get("aliases", ())):
            if key in values:
                value, used_key = values[key], key
                break
        if value is _MISSING:
            continue
        if isinstance(value, _Unparsable):
            _warn(config_path, name, used_key, value, _default_of(f), sink)
            continue
        if check is not None:
            try:
                value = check(value)
            except _Invalid as exc:
                raise ConfigError(f"{config_path}: [{name}] {used_key}: {exc}") from None
        if f.metadata.get("path") and value is not None:
            if data_root is not None and f.metadata.get("data") and not os.path.isabs(value):
                value = reroot(value, data_root)
            else:
                value = (config_path.parent / value)
            value = Path(os.path.normpath(value))
        kwargs[f.name] = value
    obj = cls(**kwargs)
    # Defaults that are paths still need resolving against the config folder.
    for f in fields(cls):
        if f.metadata.get("path") and f.name not in kwargs:
            v = getattr(obj, f.name)
            if isinstance(v, str):
                setattr(obj, f.name, Path(os.path.normpath(config_path.parent / v)))
    return obj


def _default_of(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def load_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Config:
    """Parse and validate a seed-format config file.

    Raises :class:`ConfigError` (one line: file, section, key, cause) for values of the wrong
    type or range; logs one warning per unparsable value and uses the default.
    """
    config_path = Path(path).expanduser().absolute()
    if config_path.is_dir():
        config_path = config_path / CONFIG_FILENAME
    root = Path(data_root).expanduser().absolute() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise ConfigError(f"{root}: --data-root is not a folder")
    sections = _read_sections(config_path)
    raw = {name: {k: _parse_literal(v) for k, v in keys.items()} for name, keys in sections.items()}

    sink: list[str] = []
    if "eval" in raw and "valid" in raw:
        _warn(config_path, "valid", "*", _Unparsable("", 0, "both [eval] and [valid] present"),
              "[eval]", sink)
    eval_name = "eval" if "eval" in raw or "valid" not in raw else "valid"

    built = {}
    for name, cls in _SECTION_TYPES.items():
        src = eval_name if name == "eval" else name
        built[name] = _build_section(cls, src, raw.get(src, {}), config_path, root, sink)

    cfg = Config(path=config_path, data_root=root, raw=raw, warnings=sink, **built)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    m = cfg.model
    multiple = 2 ** (m.num_layers - 1)
    for key in ("image_height", "image_width"):
        v = getattr(m, key)
        if v % multiple:
            raise cfg.error("model", key, f"{v} is not a multiple of 2**(num_layers-1) = {multiple} "
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
    names = list(cfg.mask.class_names or [])
    if cfg.model.num_classes == 1:
        return names if len(names) == 2 else ["background", names[0] if names else "foreground"]
    if names:
        return names
    return ["background"] + [f"class_{i}" for i in range(1, cfg.model.num_classes)]
