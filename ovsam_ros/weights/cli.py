"""``ovsam weights download | check``: the published weight files of a model, in one command.

    ovsam weights download --model rn50x16                    # into the paths config/models/rn50x16.yaml reads
    ovsam weights download --model rn50x16_coco --mirror /media/usb/ovsam_weights
    ovsam weights download --model rn50x16 --dir /data/weights   # + /data/weights/rn50x16.yaml reading them
    ovsam weights check --model rn50x16                       # exit status 1 while something is missing

Argument parsing imports nothing heavy (``ovsam --help`` stays fast); the model loader (torch) is
imported to read a model's YAML, open_clip to expand its registry entry."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from ovsam_ros.cli_types import non_negative_int, positive_float

#: The model of `ovsam weights` without --model: the node's and launch file's default.
DEFAULT_MODEL = "rn50x16"
PREFIX = "ovsam weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="weights_action", required=True, metavar="ACTION")
    download = actions.add_parser(
        "download", help="fetch the weight files a model YAML names (resume, sha256 check, atomic rename)",
        description="Fetch every weight file the model YAML names that is not there yet, from its published "
                    "source (ovsam_ros/data/weights/sources.yaml) or a mirror, into the path the YAML reads. "
                    "A partial download is resumed by the next run; a file is renamed into place only when "
                    "complete and its sha256 matches the one its publisher states. Files already present are "
                    "checked, never replaced.")
    _add_model_arguments(download)
    download.add_argument("--mirror", metavar="URL_OR_DIR", default=None,
                          help="fetch from this folder or http(s) URL instead (the same file names; each copy "
                               "must match a published sha256 or the mirror's own SHA256SUMS, if it has one); "
                               "default: $OVSAM_WEIGHTS_MIRROR")
    download.add_argument("--retries", type=non_negative_int, default=3,
                          help="retries of an interrupted transfer, timeout or server error per source (default 3)")
    download.add_argument("--timeout", type=positive_float, default=30.0,
                          help="seconds without data before a connection counts as stalled (default 30)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    check = actions.add_parser(
        "check", help="report each weight file of a model: present/missing, size, sha256",
        description="Each weight file the model YAML names: present or missing, its size, its sha256 against "
                    "the published one (or SHA256SUMS, written when it was downloaded), and the command that "
                    "fetches what is missing. Exit status 1 when a file is missing or differs.")
    _add_model_arguments(check)
    check.add_argument("--no-hash", action="store_true", help="sizes only: do not compute sha256 (seconds per GB)")
    for action in (download, check):
        action.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None, metavar="MODEL",
                        help="model YAML: a name in config/models/ (rn50x16, rn50x16_coco, ...) or a path; "
                             f"repeatable (default: {DEFAULT_MODEL}, the node's default)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="the files' folder instead of the paths the YAML reads; download also writes "
                             "DIR/<model>.yaml, the model YAML reading them from there")
    parser.add_argument("--sources", type=Path, default=None,
                        help="table of sources (default: the package's ovsam_ros/data/weights/sources.yaml)")


def run_from_args(args: argparse.Namespace) -> int:
    from ovsam_ros.weights.model_files import in_folder, model_files
    from ovsam_ros.weights.sources import load_table

    models = args.model or [DEFAULT_MODEL]
    table = load_table(args.sources)
    plans = [model_files(model) for model in models]
    files: list[tuple[str, Path]] = []
    for plan in plans:
        for key, path in (in_folder(plan.files, args.dir.expanduser()) if args.dir else plan.files):
            if path not in [p for _, p in files]:
                files.append((key, path))
    names = ", ".join(plan.model for plan in plans)
    if not files:
        onnx = [p.model for p in plans if p.backend != "torch"]
        say(f"model {names} names no weight files" + (
            " (ONNX graphs: made by `ovsam export`, see docs/jetson.md)" if onnx else ""))
        return 0
    weights_dir = args.dir.expanduser() if args.dir else None
    try:
        if args.weights_action == "check":
            return _check(plans, files, table, args, weights_dir)
        return _download(plans, files, table, args, weights_dir)
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume")
        return 130


def _check(plans, files, table, args, weights_dir: Optional[Path]) -> int:
    from ovsam_ros.weights.check import check_files, report
    from ovsam_ros.weights.hint import download_command

    say(f"model {', '.join(_described(p) for p in plans)}: {len(files)} weight file(s)")
    rows = check_files(files, table, hash_files=not args.no_hash)
    report(rows, say)
    missing = [r for r in rows if r.state == "missing"]
    differs = [r for r in rows if r.state == "differs"]
    command = download_command([p.model for p in plans], weights_dir)
    if args.sources:
        command += f" --sources {shlex.quote(str(args.sources))}"
    if missing:
        say(f"{len(missing)} of {len(rows)} missing. Fetch them with: {command}")
    if differs:
        say(f"{len(differs)} of {len(rows)} differ from the published file: move them away, then run {command}")
    if not missing and not differs:
        say(f"{_files(len(rows))} in place")
    return 1 if missing or differs else 0


def _download(plans, files, table, args, weights_dir: Optional[Path]) -> int:
    from ovsam_ros.weights.download import Options, download_files
    from ovsam_ros.weights.model_files import write_model_yaml
    from ovsam_ros.weights.sources import MIRROR_ENV

    mirror = args.mirror or os.environ.get(MIRROR_ENV) or None
    if mirror and not args.mirror:
        say(f"using the mirror ${MIRROR_ENV}={mirror}")
    say(f"model {', '.join(_described(p) for p in plans)}: {len(files)} weight file(s) in "
        f"{', '.join(sorted({str(p.parent) for _, p in files}))}")
    options = Options(mirror=mirror, retries=args.retries, timeout=args.timeout, progress=not args.quiet)
    outcomes = download_files(files, table, options, say, fail)
    failed = [o for o in outcomes if not o.ok]
    if weights_dir is not None and not failed:
        command = shlex.join(["ovsam", "weights", "download", *[a for m in args.model or [DEFAULT_MODEL]
                                                                 for a in ("--model", m)], "--dir", str(weights_dir)])
        for plan in plans:
            target, written = write_model_yaml(plan, weights_dir, command)
            if written:
                say(f"wrote {target}: {plan.model} reading its weights from {weights_dir}; use --model {target} "
                    f"(node and launch file: model:={target}, in a folder the node's model_dirs allows)")
            else:
                say(f"{target} exists and was not written by this command: left alone; point its weight "
                    f"paths at {weights_dir}")
    if failed:
        fail(f"{len(failed)} of {len(outcomes)} weight file(s) not in place: "
             f"{', '.join(o.dest.name for o in failed)} (reasons above)")
        return 1
    say(f"{_files(len(outcomes))} in place (model {', '.join(p.model for p in plans)})")
    return 0


def _files(n: int) -> str:
    return "the weight file is" if n == 1 else f"all {n} weight files are"


def _described(plan) -> str:
    return plan.model if plan.model == plan.config.stem else str(plan.config)


def say(line: str) -> None:
    print(line, flush=True)


def fail(line: str) -> None:
    print(f"{PREFIX}: {line}", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m ovsam_ros.weights.cli download --model rn50x16`` (the same as ``ovsam weights``)."""
    parser = argparse.ArgumentParser(prog=PREFIX, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        fail(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
