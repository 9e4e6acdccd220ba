"""The whole-slide options of ``flexunet infer`` (``--mpp``, ``--slide-mpp``, ``--tissue-mask``,
``--no-tissue-mask``) and the inputs they apply to; the run itself is :mod:`flexunet.runtime.wsi`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import click

from flexunet.core.errors import FlexunetError
from flexunet.runtime.wsi import SlideOptions, add_folder_slides, check_slide_options, run_inputs
from flexunet.runtime.wsi_reader import is_slide

__all__ = ["run_inputs", "slide_inputs", "slide_options"]

_MPP = click.FloatRange(min=0, min_open=True)
_OPTIONS = [
    click.option("--mpp", type=_MPP, default=None,
                 help="Whole slides: microns per pixel the model works at [default: the model's metadata "
                      "(export --mpp), else the slide's level 0]; picks the pyramid level, rescaling regions "
                      "when none matches."),
    click.option("--slide-mpp", type=_MPP, default=None,
                 help="Whole slides: microns per level-0 pixel of the slides [default: their metadata]."),
    click.option("--tissue-mask", type=click.Path(exists=True, path_type=Path), default=None,
                 help="Whole slides: a tissue mask image (any size, non-zero = tissue), or a folder of "
                      "<slide stem>.png masks [default: Otsu on saturation of a thumbnail]."),
    click.option("--no-tissue-mask", "no_tissue_mask", is_flag=True,
                 help="Whole slides: compute every region, background included."),
]

def slide_options(command):
    """Add the whole-slide options to a click command (they arrive as keyword arguments)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def slide_inputs(inputs: Sequence[os.PathLike], paths: Sequence[Path], options: dict,
                 on_ray: bool = False) -> tuple[list[Path], SlideOptions]:
    """The inputs with the slides of the named folders added, and the slide options checked.

    Raises:
        FlexunetError: contradicting options, a missing mask, or slides in a ``--ray`` run.
    """
    slides = SlideOptions(mpp=options.get("mpp"), slide_mpp=options.get("slide_mpp"),
                          tissue_mask=options.get("tissue_mask"), tissue=not options.get("no_tissue_mask"))
    check_slide_options(slides)
    paths = add_folder_slides(inputs, paths)
    if on_ray:
        found = next((p for p in paths if is_slide(p)), None)
        if found is not None:
            raise FlexunetError(f"{found}: whole-slide images are segmented on this machine only; "
                                "run them without --ray")
    return paths, slides
