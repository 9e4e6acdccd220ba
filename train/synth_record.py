"""Which files of a synthetic data set ``flexunet synth`` wrote: its record, ``flexunet-synth.json``.

synth never touches a file it did not write.  It writes into a folder that is new or empty, or one
that holds its record; the record lists every file it wrote with the SHA-256 of its bytes.  Only a
listed file whose bytes still match (or, after an interrupted run, one it had not hashed yet) is
replaced or removed; anything else in the folder is left as it is, and a file of any other origin
where synth would write refuses the run before anything is written.  A folder without the record
(made by an older flexunet, or the record deleted) is accepted only when every file in it is, pixel
for pixel, what this run writes there.

The record is written before the first file (listing the files about to be written) and again,
with their hashes, when the run is complete.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from flexunet.core.atomic import write_text
from flexunet.core.errors import FlexunetError
from flexunet.core.machine import sha256_file

RECORD_NAME = "flexunet-synth.json"
RECORD_FORMAT = 1

# What synth writes: <split>/<images|masks>/<NNNN>.png.  A record naming anything else is refused.
_TARGET_RE = re.compile(r"^(train|valid|test|mini_test)/(images|masks)/\d{4,}\.png$")


@dataclass
class Claim:
    """What a run may do in its folder."""

    ours: dict[str, str | None]  # files synth wrote and nobody changed since: relative path -> hash
    identical: set[str]          # (a folder without record) files that already are what this run writes
    foreign: int                 # other files in the folder, left untouched


def claim_folder(out: Path, targets: Sequence[str],
                 first_different: Callable[[list[str]], str | None]) -> Claim:
    """Check that synth may write ``targets`` (paths relative to ``out``) and say which existing
    files are its own; raise a one-line :class:`FlexunetError` before anything is written if not.

    ``first_different(paths)`` is asked only for a folder without record: the first of the existing
    ``paths`` whose pixels differ from what this run writes there, or None.
    """
    if os.path.lexists(out) and not out.is_dir():
        raise FlexunetError(f"{out}: not a folder")
    existing = _files_below(out)
    record = out / RECORD_NAME
    identical: set[str] = set()
    if os.path.lexists(record):
        ours = _own_files(out, read_record(record))
    else:
        ours = {}
        if existing:
            identical = _adopt_unrecorded(out, existing, set(targets), first_different)
    _check_folders(out, targets)
    taken = [t for t in targets if os.path.lexists(out / t) and t not in ours and t not in identical]
    if taken:
        raise FlexunetError(f"{out / taken[0]}: not written by flexunet synth (or changed since), and "
                            f"synth would write there ({len(taken)} such file{'s' * (len(taken) > 1)}); "
                            "nothing was changed: move them away or choose another folder")
    foreign = len(existing - set(ours) - identical - {RECORD_NAME})
    return Claim(ours, identical, foreign)


def _files_below(out: Path) -> set[str]:
    """Every entry below ``out`` that is not a folder (links not followed), as relative paths."""
    found: set[str] = set()
    if not out.is_dir():
        return found
    for folder, dirs, files in os.walk(out):
        rel = Path(folder).relative_to(out)
        found.update((rel / name).as_posix() for name in files)
        found.update((rel / name).as_posix() for name in dirs if os.path.islink(os.path.join(folder, name)))
    return found


def _adopt_unrecorded(out: Path, existing: set[str], targets: set[str],
                      first_different: Callable[[list[str]], str | None]) -> set[str]:
    """A folder without record: its files, when every one is what this run writes there."""
    refusal = FlexunetError(
        f"{out}: the folder is not empty ({len(existing)} files) and holds no {RECORD_NAME}, so "
        "flexunet synth did not make it (or not with these options); nothing was changed: choose a "
        "new or empty folder")
    if not existing <= targets or first_different(sorted(existing)) is not None:
        raise refusal
    return set(existing)


def _check_folders(out: Path, targets: Sequence[str]) -> None:
    """Each folder synth writes into is a folder or does not exist yet."""
    folders = {Path(t).parent for t in targets}
    for folder in sorted(folders | {p for f in folders for p in f.parents}):
        path = out / folder
        if os.path.lexists(path) and not path.is_dir():
            raise FlexunetError(f"{path}: not a folder (synth writes its {folder.name} there); "
                                "nothing was changed")


def read_record(record: Path) -> dict[str, str | None]:
    """The files a record lists (relative path -> SHA-256, None while being written)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != RECORD_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
        for rel, digest in files.items():
            if not _TARGET_RE.match(rel) or not (digest is None or isinstance(digest, str)):
                raise ValueError(f"unexpected entry {rel[:60]!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FlexunetError(f"{record}: not a record flexunet synth can read ({exc}); nothing was "
                            "changed: choose another folder") from None
    return files


def _own_files(out: Path, listed: dict[str, str | None]) -> dict[str, str | None]:
    """The listed files that are still as synth wrote them."""
    ours = {}
    for rel, digest in listed.items():
        path = out / rel
        if not path.is_file() or path.is_symlink():
            continue
        if digest is None or _digest(path) == digest:
            ours[rel] = digest
    return ours


def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def write_record(out: Path, files: dict[str, str | None], **about) -> None:
    """Write the record: what made the data set (``about``) and every file with its hash."""
    text = json.dumps({"format": RECORD_FORMAT, **about, "files": dict(sorted(files.items()))},
                      indent=1) + "\n"
    try:
        write_text(out / RECORD_NAME, text)
    except OSError as exc:
        raise FlexunetError(f"{out / RECORD_NAME}: cannot write ({exc.strerror or exc})") from None


def remove_own(out: Path, rels) -> int:
    """Remove files synth wrote in an earlier run and this run does not write; how many."""
    removed = 0
    for rel in sorted(rels):
        try:
            (out / rel).unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FlexunetError(f"{out / rel}: cannot remove its earlier file "
                                f"({exc.strerror or exc})") from None
    return removed
