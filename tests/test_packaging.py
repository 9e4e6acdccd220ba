"""One import name: the wheel installs only ``flexunet``, and a user's ``train.py``, ``export.py`` or
``runtime.py`` in the working folder never changes what flexunet runs (API and command line)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Each stand-in module leaves a file behind when it is imported, and fails loudly.
TRAP = ("from pathlib import Path\n"
        "Path(__file__).with_suffix('.imported').write_text('imported')\n"
        "raise SystemExit('the user\\'s {name}.py was imported by flexunet')\n")
USER_MODULES = ("train", "export", "runtime", "core", "projects", "cli")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, cwd=out)
    (found,) = out.glob("flexunet-*.whl")
    return found


def test_wheel_installs_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["flexunet"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"flexunet"}
    # the layers are subpackages, and nothing of the repository's tests, benchmarks or data rides along
    for module in ("flexunet/__init__.py", "flexunet/cli.py", "flexunet/core/compare.py",
                   "flexunet/runtime/segmenter.py", "flexunet/train/trainer.py", "flexunet/export/exporter.py"):
        assert module in names
    assert not [n for n in names if n.startswith(("flexunet/tests/", "flexunet/benchmarks/"))]
    assert not [n for n in names if n.endswith((".png", ".config", ".md")) and "dist-info" not in n]


def test_generic_names_are_not_importable(tmp_path):
    code = ("import importlib.util\n"
            f"print([n for n in {USER_MODULES!r} if importlib.util.find_spec(n) is not None])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def user_folder(tmp_path, make_onnx, make_images) -> Path:
    """A working folder holding the user's own train.py, export.py, runtime.py (...), a model and images."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name in USER_MODULES:
        (folder / f"{name}.py").write_text(TRAP.format(name=name))
    make_images(folder / "slides", [(40, 50)])
    make_onnx("model.onnx").rename(folder / "model.onnx")
    return folder


def _assert_untouched(folder: Path, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    assert not list(folder.glob("*.imported")), proc.stderr


def test_the_trap_springs_when_a_generic_name_is_imported(user_folder):
    proc = subprocess.run([sys.executable, "-c", "import runtime"], capture_output=True, text=True, cwd=user_folder)
    assert proc.returncode != 0 and (user_folder / "runtime.imported").is_file()


def test_user_modules_do_not_shadow_the_api(user_folder):
    code = ("from flexunet.runtime import Segmenter\n"
            "import flexunet\n"
            "assert flexunet.Segmenter is Segmenter\n"
            "with Segmenter('model.onnx') as seg:\n"
            "    print(seg.segment('slides/img00.png').labels.shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=user_folder)
    _assert_untouched(user_folder, proc)
    assert proc.stdout.strip() == "(40, 50)"


@pytest.mark.parametrize("command", [[str(BIN / "flexunet")], [sys.executable, "-m", "flexunet"]],
                         ids=["console-script", "python-m"])
def test_user_modules_do_not_shadow_the_cli(user_folder, command):
    proc = subprocess.run([*command, "infer", "model.onnx", "slides", "-o", "masks"],
                          capture_output=True, text=True, cwd=user_folder)
    _assert_untouched(user_folder, proc)
    assert (user_folder / "masks" / "img00.png").is_file()
    for sub in ("--help", "train --help", "export --help", "project --help"):
        proc = subprocess.run([*command, *sub.split()], capture_output=True, text=True, cwd=user_folder)
        _assert_untouched(user_folder, proc)


@pytest.mark.slow
def test_user_modules_do_not_shadow_the_keras_backend(user_folder):
    """The Keras backend once imported ``train.losses``, which ran the user's ``train.py``."""
    pytest.importorskip("tensorflow")
    code = ("import keras\n"
            "from flexunet.architectures.unet import build_unet\n"
            "build_unet(32, 32, 3, num_classes=1, base_filters=2, num_layers=2).save('m/best_model.keras')\n")
    (user_folder / "m").mkdir()
    (user_folder.parent / "m").mkdir()
    (user_folder / "m" / "train_eval_infer.config").write_text(
        "[model]\nimage_width = 32\nimage_height = 32\nimage_channels = 3\nnum_classes = 1\nnum_layers = 2\n"
        "base_filters = 2\n")
    build = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=user_folder.parent)
    assert build.returncode == 0, build.stderr
    (user_folder.parent / "m" / "best_model.keras").rename(user_folder / "m" / "best_model.keras")
    proc = subprocess.run([sys.executable, "-m", "flexunet", "infer", "m/best_model.keras", "slides", "-o", "kmasks"],
                          capture_output=True, text=True, cwd=user_folder)
    _assert_untouched(user_folder, proc)
    assert (user_folder / "kmasks" / "img00.png").is_file()
