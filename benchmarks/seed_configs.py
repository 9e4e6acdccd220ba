"""`flexunet summary` over the seed API's own configs: what flexunet builds, with how many parameters,
and what it refuses, in one line and without a traceback.

    python benchmarks/seed_configs.py [--mirror GIT_DIR | --configs DIR] [--name seed_configs]

By default the configs are every ``projects/*/*/*.config*`` file of the seed API repository (133),
taken one by one from its git directory with ``git show HEAD:<path>`` into a temporary folder (the
mirror lacks the data blobs; only configs are needed). Each one runs through the real ``summary``
command in this process (click's runner: the same code, exit code and messages as the command line).
A config whose run ended in an exception other than flexunet's one-line errors counts as a traceback.
The parameter counts of the seed's own code on each architecture's Acute-Lymphoblastic-Leukemia config
(tests/seed_models/manifest.json) are compared where the same config was built.
Writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_results  # noqa: E402

MIRROR = Path("/work/.mirror/sarah-antillia+Tensorflow-Image-Segmentation-API/repo")
MANIFEST = REPO / "tests" / "seed_models" / "manifest.json"
MODEL_LINE = re.compile(r"^\s*model\s*=\s*[\"']?([A-Za-z0-9_]+)", re.M)


def extract(mirror: Path, dest: Path) -> list[Path]:
    """Every ``projects/<folder>/<project>/*.config*`` of the mirror, written under ``dest``."""
    names = subprocess.run(["git", "-C", str(mirror), "ls-tree", "-r", "--name-only", "HEAD", "projects"],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    paths = []
    for name in names:
        parts = name.split("/")
        if len(parts) != 4 or ".config" not in parts[-1]:
            continue
        text = subprocess.run(["git", "-C", str(mirror), "show", f"HEAD:{name}"], check=True,
                              capture_output=True).stdout
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
        paths.append(path)
    return paths


def seed_counts() -> dict[str, tuple[str, int]]:
    """Seed-code parameter counts by config path (``projects/...``): (the seed class that counted
    them, the count), from the manifest. The class is the project folder's, which a config may not
    name (projects/TensorflowU2Net/Acute-Lymphoblastic-Leukemia's says TensorflowUNet3Plus): a count
    is compared only where the config's ``[model] model`` is that class."""
    data = json.loads(MANIFEST.read_text())["all_config_param_counts"]
    return {v["config"]: (arch, v["params"]) for arch, v in data.items()
            if v.get("params") and v["config"].startswith("projects/") and "(" not in v["config"]}


def run_summary(path: Path) -> dict:
    """One ``flexunet summary`` run: exit code, parameters or the error line, traceback or not."""
    from click.testing import CliRunner

    from flexunet.cli import cli

    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, ["summary", str(path)])
    seconds = time.perf_counter() - t0
    params = re.findall(r"^parameters: (\d+)$", result.stdout, re.M)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    traceback = traceback or "Traceback" in result.output
    row = {"exit_code": result.exit_code, "seconds": round(seconds, 2), "traceback": traceback,
           "parameters": int(params[-1]) if params else None,
           "error": errors[0] if errors and result.exit_code else None,
           "error_lines": len(errors) if result.exit_code else 0}
    if traceback:
        row["exception"] = f"{type(result.exception).__name__}: {str(result.exception)[:200]}"
    return row


def classify(row: dict) -> str:
    if row["traceback"]:
        return "traceback"
    if row["exit_code"] == 0 and row["parameters"] is not None:
        return "built"
    if row["error"] and "is not supported:" in row["error"]:
        return "refused (architecture)"
    return "refused (config)"


def markdown(rows: list[dict], totals: Counter, by_arch: dict) -> str:
    lines = ["# `flexunet summary` on the seed API's configs", "",
             f"{len(rows)} configs: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())), "",
             "| `[model] model` | configs | built | refused (architecture) | refused (config) | tracebacks |",
             "|---|---:|---:|---:|---:|---:|"]
    for arch, c in sorted(by_arch.items()):
        lines.append(f"| {arch} | {sum(c.values())} | {c['built']} | {c['refused (architecture)']} | "
                     f"{c['refused (config)']} | {c['traceback']} |")
    lines += ["", "Seed-code parameter counts (Keras 3, backbones weights=None) vs `flexunet summary`:", "",
              "| config | seed | flexunet | equal |", "|---|---:|---:|---|"]
    for r in rows:
        if r.get("seed_parameters"):
            lines.append(f"| {r['config']} | {r['seed_parameters']:,} | "
                         f"{r['parameters'] if r['parameters'] is None else format(r['parameters'], ',')} | "
                         f"{'yes' if r['parameters'] == r['seed_parameters'] else 'NO'} |")
    lines += ["", "| config | model | result |", "|---|---|---|"]
    for r in rows:
        result = f"{r['parameters']:,} parameters" if r["outcome"] == "built" else \
            (r.get("exception") or r["error"] or "").replace("|", "\\|")
        lines.append(f"| {r['config']} | {r['model']} | {result} |")
    return "\n".join(lines) + "\n"


def measure(args) -> list[dict]:
    """One row per config: the real ``summary`` command's outcome."""
    from flexunet.core.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    with tempfile.TemporaryDirectory(prefix="seed-configs-") as tmp:
        root = args.configs or Path(tmp)
        paths = sorted(p for p in root.rglob("*.config*") if p.is_file()) if args.configs else \
            extract(args.mirror, root)
        rows = []
        for i, path in enumerate(paths):
            rel = path.relative_to(root).as_posix()
            found = MODEL_LINE.search(path.read_text(errors="replace"))
            row = {"config": rel, "model": found.group(1) if found else "?", **run_summary(path)}
            row["outcome"] = classify(row)
            rows.append(row)
            print(f"[{i + 1}/{len(paths)}] {rel}: {row['outcome']} "
                  f"{row['parameters'] if row['parameters'] is not None else row['error'] or ''}"[:220],
                  flush=True)
            keras.backend.clear_session()
            gc.collect()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path, default=MIRROR, help="the seed API's git directory")
    ap.add_argument("--configs", type=Path, default=None, help="a folder of configs instead (searched recursively)")
    ap.add_argument("--rescore", type=Path, default=None,
                    help="re-score the rows of an earlier results JSON against the seed counts (no run)")
    ap.add_argument("--name", default="seed_configs")
    args = ap.parse_args(argv)
    extra = {}
    if args.rescore:
        earlier = json.loads(args.rescore.read_text())
        rows, extra = earlier["rows"], {"measured": earlier["date"]}
    else:
        rows = measure(args)
    expected = seed_counts()
    for row in rows:
        if row.get("error"):  # the temporary folder the configs were extracted to says nothing
            row["error"] = re.sub(r"\S*/seed-configs-[^/]+/", "", row["error"])
        row.pop("seed_parameters", None)
        arch, count = expected.get(row["config"], (None, None))
        if arch == row["model"]:
            row["seed_parameters"] = count
    totals = Counter(r["outcome"] for r in rows)
    by_arch: dict[str, Counter] = {}
    for r in rows:
        by_arch.setdefault(r["model"], Counter())[r["outcome"]] += 1
    mismatched = [r["config"] for r in rows if r.get("seed_parameters") and r["parameters"] != r["seed_parameters"]]
    data = {"configs": len(rows), **extra, "totals": dict(totals),
            "by_model": {k: dict(v) for k, v in sorted(by_arch.items())},
            "seed_count_mismatches": mismatched, "rows": rows}
    path = write_results(args.name, data, markdown(rows, totals, by_arch))
    print(f"{len(rows)} configs: {dict(totals)}; seed-count mismatches: {mismatched or 'none'}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
