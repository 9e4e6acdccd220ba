"""The tiny seed configs and the per-architecture choices of make_seed_models.py (data only)."""
from __future__ import annotations

SEED = 20240926
BATCH = 1                      # reference batch size

# ---------------------------------------------------------------------------------------------------
# Tiny configs, in the seed's train_eval_infer.config format.  The [model] keys are the ones the seed's
# create() methods read; the other sections are what its constructors read.

_COMMON_TAIL = """
[dataset]
datasetclass  = "ImageMaskDataset"

[train]
epochs        = 1
batch_size    = 2
patience      = 10
model_dir     = "./models"
eval_dir      = "./eval"
save_weights_only = {swo}
metrics       = ["binary_accuracy", "val_binary_accuracy"]

[infer]
images_dir    = "./mini_test"
output_dir    = "./mini_test_output"

[mask]
blur      = False
binarize  = True
threshold = 128
"""


def _api_config(arch: str, model_lines: str, swo: bool = True) -> str:
    return (f"; {arch}.config: tiny reference model for flexunet's seed .h5 tests "
            "(made by make_seed_models.py)\n"
            f"[model]\nmodel          = \"{arch}\"\n" + model_lines.strip() + "\n"
            + _COMMON_TAIL.format(swo=swo))


_TINY_HEAD = """
image_width    = 64
image_height   = 64
image_channels = 3
num_classes    = 1
"""
_TINY_TAIL = """
dropout_rate   = 0.05
learning_rate  = 0.001
loss           = "binary_crossentropy"
metrics        = ["binary_accuracy"]
show_summary   = False
"""


def _levels(base_filters: int, num_layers: int) -> str:
    return f"base_filters   = {base_filters}\nnum_layers     = {num_layers}"


def _tiny(model_lines: str) -> str:
    """The [model] lines of a tiny 64x64 one-class model: these keys between the common ones."""
    return _TINY_HEAD.strip() + "\n" + model_lines.strip() + "\n" + _TINY_TAIL.strip()


CONFIGS = {
    # base_kernels (5,5) and dilation (2,2) exercise the per-level kernel/dilation decrement;
    # normalization=True puts BatchNormalization layers in the file; custom loss/metric names go into
    # the whole model's training_config.
    "TensorflowUNet": _api_config("TensorflowUNet", """
image_width    = 64
image_height   = 64
image_channels = 3
num_classes    = 1
base_filters   = 4
num_layers     = 3
base_kernels   = (5, 5)
dilation       = (2, 2)
normalization  = True
dropout_rate   = 0.05
learning_rate  = 0.001
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]
show_summary   = False
"""),
    "TensorflowAttentionUNet": _api_config("TensorflowAttentionUNet", _tiny(_levels(4, 3))),
    # UNet3Plus always has 5 levels; num_layers only sets how many filter sizes exist and so the
    # decoder width num_layers * base_filters: 6 as in the seed's own configs.
    "TensorflowUNet3Plus": _api_config("TensorflowUNet3Plus", _tiny(_levels(2, 6))),
    "TensorflowMultiResUNet": _api_config("TensorflowMultiResUNet", _tiny(_levels(8, 2))),
    "TensorflowSharpUNet": _api_config("TensorflowSharpUNet", _tiny("""
filters        = [4, 8]
max_filter     = 16
base_ksize     = (5, 5)
dilation       = (1, 1)
base_filters   = 16
num_layers     = 6
""")),
    # DeepLabV3Plus (ResNet50 + 256-wide ASPP) and EfficientNetB7UNet have fixed widths: not tiny.
    "TensorflowDeepLabV3Plus": _api_config("TensorflowDeepLabV3Plus", _tiny(_levels(16, 6))),
    "TensorflowEfficientNetB7UNet": _api_config("TensorflowEfficientNetB7UNet", _tiny(_levels(16, 6))),
    # The Lizard seed's multiclass Flex UNet (its trainer always saves the whole model).
    "TensorFlowFlexUNet": """; TensorFlowFlexUNet.config: tiny multiclass reference model for flexunet's seed .h5 tests
; (made by make_seed_models.py; sections as in the Lizard seed's config)
[model]
model         = "TensorFlowFlexUNet"
generator     = False
image_width    = 64
image_height   = 64
image_channels = 3
input_normalize = False
normalization  = False
num_classes    = 4
base_filters   = 4
base_kernels   = (7,7)
num_layers     = 3
dropout_rate   = 0.04
dilation       = (1,1)
optimizer      = "Adam"
learning_rate  = 0.0001
clipvalue      = 0.4
loss           = "categorical_crossentropy"
metrics        = ["dice_coef_multiclass"]
show_summary   = False

[dataset]
class_name    = "ImageCategorizedMaskDataset"

[train]
epochs        = 1
batch_size    = 2
patience      = 10
metrics       = ["dice_coef_multiclass", "val_dice_coef_multiclass"]
model_dir     = "./models/"
eval_dir      = "./eval/"
images_dir    = "./dataset/train/images/"
masks_dir     = "./dataset/train/masks/"
save_weights_only  = True

[valid]
images_dir = "./dataset/valid/images/"
masks_dir  = "./dataset/valid/masks/"

[test]
images_dir = "./dataset/test/images/"
masks_dir  = "./dataset/test/masks/"

[infer]
images_dir    = "./mini_test/images/"
output_dir    = "./mini_test_output/"

[image]
color_order = "RGB"

[mask]
mask_file_format = ".png"
rgb_map = {(0,0,0):0, (0,255,0):1, (255,0,0):2, (0,0,255):3}
""",
}

# U2Net: the seed reads only base_filters/num_layers (RSU output widths base*2^i, intermediate widths a
# quarter of them, so base_filters >= 4); 2 levels + the two RSU-4F levels fit 64x64 inputs.
CONFIGS["TensorflowU2Net"] = _api_config("TensorflowU2Net", _tiny(_levels(4, 2)))
# The Lizard seed's Flex U2Net, multiclass, from the Flex UNet config with the model name and
# num_layers changed (2 levels as above; every level adds a nested RSU block of ~40 HDF5 objects).
CONFIGS["TensorFlowFlexU2Net"] = CONFIGS["TensorFlowFlexUNet"].replace(
    "TensorFlowFlexUNet", "TensorFlowFlexU2Net").replace("num_layers     = 3", "num_layers     = 2")

# The seed's EfficientUNet (EfficientNetB0 backbone here) builds only under tf.keras 2.
CONFIGS["TensorflowEfficientUNet"] = _api_config("TensorflowEfficientUNet", _tiny(
    _levels(16, 6) + '\nefficientnet   = "B0"'))

# Fixed-width backbones: no file is kept; their weights come from recipe.py (a pure function of the
# layer position, weight index, name and shape) and the seed's output with them is recorded.  Keras
# modes each is built under (the seed's EfficientUNet fails to build under Keras 3).
RECIPE_MODES = {"TensorflowDeepLabV3Plus": ("keras3", "tfkeras2"),
                "TensorflowEfficientNetB7UNet": ("keras3", "tfkeras2"),
                "TensorflowEfficientUNet": ("tfkeras2",)}

# Trained for one epoch (the files carry optimizer state, as the seed's checkpoints do).  The others are
# checkpointed untrained, with seeded noise added to their weights and BatchNormalization statistics,
# to keep each file small (an optimizer state triples the weights and the HDF5 objects).
TRAINED = {"TensorflowUNet", "TensorFlowFlexUNet"}
SOURCE = {arch: ("lizard" if arch.startswith("TensorFlowFlex") else "api") for arch in CONFIGS}
FIXED_WIDTH = set(RECIPE_MODES)
# Whole model only: the Lizard trainer never writes weights-only files, and U2Net's (the same layers
# and layouts) are kept for the API model; this keeps the folder smaller.
WHOLE_ONLY = {"TensorFlowFlexU2Net"}
# API project folders whose ALL config is counted; the folder of TensorflowUNet is
# TensorflowSlightlyFlexibleUNet.
COUNT_FOLDERS = {
    "TensorflowUNet": "TensorflowSlightlyFlexibleUNet",
    "TensorflowAttentionUNet": "TensorflowAttentionUNet",
    "TensorflowUNet3Plus": "TensorflowUNet3Plus",
    "TensorflowMultiResUNet": "TensorflowMultiResUNet",
    "TensorflowSharpUNet": "TensorflowSharpUNet",
    "TensorflowDeepLabV3Plus": "TensorflowDeepLabV3Plus",
    "TensorflowEfficientNetB7UNet": "TensorflowEfficientNetB7UNet",
    "TensorflowEfficientUNet": "TensorflowEfficientUNet",
    "TensorflowTransUNet": "TensorflowTransUNet",
    "TensorflowSwinUNet": "TensorflowSwinUNet",
    "TensorflowU2Net": "TensorflowU2Net",
}
# The ALL config of projects/TensorflowU2Net says model = "TensorflowUNet3Plus" (the count above builds
# TensorflowU2Net from it anyway); the only two U2Net configs are MultipleMyeloma's.
COUNT_EXTRA = {"TensorflowU2Net (MultipleMyeloma)":
               ("TensorflowU2Net", "TensorflowU2Net/MultipleMyeloma/train_eval_infer.config")}
