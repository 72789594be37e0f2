#!/usr/bin/env python3
"""Mutation check: does a test fail when the code it guards breaks?

Each entry of ``tools/mutations.toml`` is one small, realistic break of product code (an exact
find/replace in one file), the tests that should catch it and why. For every selected entry this
applies the break to a TEMPORARY COPY of the checkout (never to the checkout itself: others may be
editing it), runs the named tests there with ``python -m pytest -x`` and reports whether a test
failed (killed) or all passed (survived: a gap in the tests).

    .venv/bin/python tools/mutation_check.py --only ovsam_ros/robot/     # the breaks of one area
    .venv/bin/python tools/mutation_check.py --id depth3d-fy             # one break
    .venv/bin/python tools/mutation_check.py --list                      # what is in the file
    .venv/bin/python tools/mutation_check.py --check                     # every entry still applies?

The copy holds what ``git ls-files --cached --others --exclude-standard`` lists (the working tree,
uncommitted edits included, ignored build outputs excluded). Tests run with the copy as the working
directory and first on ``PYTHONPATH`` (subprocesses the tests start import the copy too), without
bytecode caches (a mutant of the same size and mtime must not reuse a stale ``.pyc``). Before any
mutant runs, the tool checks that every mutated module imports from the copy and that the selected
tests pass on the unmutated copy; an entry whose ``find`` text no longer occurs exactly ``count``
times is reported STALE (the code moved on: update the entry).

Exit status: 0 every selected break was killed, 1 some survived, 2 stale entries or errors.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LIST = ROOT / "tools" / "mutations.toml"
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider")
KEYS = {"id", "file", "find", "replace", "tests", "why", "count"}


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str  # relative to the checkout root
    find: str
    replace: str
    tests: tuple[str, ...]  # pytest node ids / paths, relative to the checkout root
    why: str
    count: int = 1  # occurrences of ``find`` expected (all are replaced)


@dataclass
class Outcome:
    mutation: Mutation
    result: str  # killed | survived | stale | error | timeout
    seconds: float = 0.0
    detail: str = ""


def load_mutations(path: Path) -> list[Mutation]:
    """The entries of a mutations file ([[mutation]] tables); ValueError naming the bad entry."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    out: list[Mutation] = []
    for n, entry in enumerate(data.get("mutation", []), 1):
        where = f"{path}: mutation {n} ({entry.get('id', 'no id')})"
        missing = {"id", "file", "find", "replace", "tests", "why"} - set(entry)
        if missing or set(entry) - KEYS:
            raise ValueError(f"{where}: missing {sorted(missing)}, unknown {sorted(set(entry) - KEYS)}")
        tests = entry["tests"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t for t in tests):
            raise ValueError(f"{where}: tests must be a non-empty list of pytest paths / node ids")
        if entry["find"] == entry["replace"] or not entry["find"]:
            raise ValueError(f"{where}: find must be non-empty and differ from replace")
        count = entry.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}: count must be an integer >= 1")
        out.append(Mutation(entry["id"], entry["file"], entry["find"], entry["replace"], tuple(tests),
                            " ".join(entry["why"].split()), count))
    ids = [m.id for m in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return out


def select(mutations: Sequence[Mutation], only: Sequence[str], ids: Sequence[str]) -> list[Mutation]:
    unknown = set(ids) - {m.id for m in mutations}
    if unknown:
        raise ValueError(f"unknown mutation id(s): {', '.join(sorted(unknown))}")
    return [m for m in mutations
            if (not only or any(m.file.startswith(prefix) for prefix in only)) and (not ids or m.id in ids)]


def copy_checkout(root: Path, dest: Path) -> int:
    """Copy the working tree's tracked and untracked-but-not-ignored files into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    copied = 0
    for rel in filter(None, listed):
        src, dst = root / rel, dest / rel
        if not os.path.lexists(src):  # deleted in the working tree, not yet in git
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            shutil.copy2(src, dst)
        else:  # a submodule or other nested checkout: not copied
            continue
        copied += 1
    return copied


def test_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def module_of(file: str) -> Optional[str]:
    if not file.endswith(".py"):
        return None
    parts = list(Path(file).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def check_imports(copy: Path, python: str, files: Sequence[str]) -> list[str]:
    """Import every mutated module in the copy; the lines ``module -> file``. RuntimeError when a
    module resolves outside the copy (a mutant there would run the checkout's code, not the copy's)."""
    modules = sorted({m for m in map(module_of, files) if m})
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    print(name, '->', importlib.import_module(name).__file__)\n")
    proc = subprocess.run([python, "-c", code, *modules], cwd=copy, env=test_env(copy), capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"importing {', '.join(modules)} in the copy failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.split("\n")[:-1]
    outside = [line for line in lines if not line.split(" -> ", 1)[1].startswith(str(copy) + os.sep)]
    if outside:
        raise RuntimeError("modules resolve outside the copy:\n" + "\n".join(outside))
    return lines


def run_pytest(copy: Path, python: str, tests: Sequence[str], timeout: float,
               extra: Sequence[str] = ()) -> tuple[int, float, str]:
    """(pytest exit status or -1 on timeout, seconds, output tail)."""
    start = time.monotonic()
    try:
        proc = subprocess.run([python, "-m", "pytest", *PYTEST_ARGS, *extra, *tests], cwd=copy,
                              env=test_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return -1, time.monotonic() - start, out[-2000:]
    return proc.returncode, time.monotonic() - start, (proc.stdout + proc.stderr)[-4000:]


def first_failure(output: str) -> str:
    found = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return found[0] if found else ""


def apply(copy: Path, mutation: Mutation) -> Optional[str]:
    """Write the mutant into the copy; the original text, or None when the entry is stale."""
    path = copy / mutation.file
    if not path.is_file():
        return None
    original = path.read_text(encoding="utf-8")
    if original.count(mutation.find) != mutation.count:
        return None
    path.write_text(original.replace(mutation.find, mutation.replace), encoding="utf-8")
    return original


def check(mutation: Mutation, copy: Path, python: str, timeout: float, extra: Sequence[str]) -> Outcome:
    original = apply(copy, mutation)
    if original is None:
        path = copy / mutation.file
        found = path.read_text(encoding="utf-8").count(mutation.find) if path.is_file() else "no file"
        return Outcome(mutation, "stale", detail=f"find text occurs {found} time(s), expected {mutation.count}")
    try:
        status, seconds, output = run_pytest(copy, python, mutation.tests, timeout, extra)
    finally:
        (copy / mutation.file).write_text(original, encoding="utf-8")
    if status == -1:
        return Outcome(mutation, "timeout", seconds, f"no result within {timeout:g} s")
    if status == 0:
        return Outcome(mutation, "survived", seconds)
    if status == 1:
        return Outcome(mutation, "killed", seconds, first_failure(output))
    # 2: interrupted, which includes a collection error (the mutant does not even import: caught);
    # 3 internal error, 4 usage error (a test id that does not exist), 5 no tests collected
    failed = first_failure(output)
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return Outcome(mutation, "killed" if status == 2 and failed else "error", seconds,
                   f"pytest exit {status}: {failed or last}")


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("id", "file", "result", "seconds", "first failing test / note")]
    rows += [(o.mutation.id, o.mutation.file, o.result.upper() if o.result != "killed" else o.result,
              f"{o.seconds:.1f}", o.detail) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 20)
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=DEFAULT_LIST, help="mutations file (default: %(default)s)")
    parser.add_argument("--only", action="append", default=[], metavar="PATH",
                        help="only breaks of files under this path (repeatable), e.g. ovsam_ros/robot/")
    parser.add_argument("--id", action="append", default=[], dest="ids", help="only this break (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the selected entries and exit")
    parser.add_argument("--check", action="store_true",
                        help="only check that each entry's find text occurs as often as it says (no tests run)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default: %(default)s)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pytest (default: this one)")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    parser.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument (repeatable)")
    args = parser.parse_args(argv)

    try:
        chosen = select(load_mutations(args.file), args.only, args.ids)
    except ValueError as err:
        print(f"mutation_check: {err}", file=sys.stderr)
        return 2
    if not chosen:
        print("mutation_check: no mutation selected", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.id}  ({m.file})\n    {m.why}\n    tests: {' '.join(m.tests)}")
        return 0

    if args.check:
        stale = [m for m in chosen if not (ROOT / m.file).is_file()
                 or (ROOT / m.file).read_text(encoding="utf-8").count(m.find) != m.count]
        for m in stale:
            print(f"STALE {m.id}: its find text does not occur {m.count} time(s) in {m.file}")
        print(f"{len(chosen) - len(stale)} of {len(chosen)} entries apply")
        return 2 if stale else 0

    copy = Path(tempfile.mkdtemp(prefix="ovsam-mutation-"))
    try:
        print(f"copy of {ROOT}: {copy_checkout(ROOT, copy)} files in {copy}", flush=True)
        try:
            for line in check_imports(copy, args.python, [m.file for m in chosen]):
                print(f"  imports from the copy: {line}", flush=True)
        except RuntimeError as err:
            print(f"mutation_check: {err}", file=sys.stderr)
            return 2
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
            status, seconds, output = run_pytest(copy, args.python, tests, args.timeout * 2, args.pytest_arg)
            print(f"baseline (unmutated copy): pytest exit {status} in {seconds:.1f} s", flush=True)
            if status != 0:
                print(f"mutation_check: the selected tests do not pass on the unmutated copy:\n{output}",
                      file=sys.stderr)
                return 2
        outcomes = []
        for m in chosen:
            outcome = check(m, copy, args.python, args.timeout, args.pytest_arg)
            print(f"  {outcome.result:8s} {outcome.seconds:7.1f} s  {m.id}", flush=True)
            outcomes.append(outcome)
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)

    print()
    print(table(outcomes))
    survived = [o for o in outcomes if o.result == "survived"]
    bad = [o for o in outcomes if o.result in ("stale", "error")]
    killed = sum(o.result in ("killed", "timeout") for o in outcomes)
    print(f"\n{killed} killed, {len(survived)} survived, {len(bad)} stale/error, of {len(outcomes)}; "
          f"{sum(o.seconds for o in outcomes):.0f} s of test runs")
    for o in survived:
        print(f"SURVIVED {o.mutation.id}: {o.mutation.why}\n    tests run: {' '.join(o.mutation.tests)}")
    return 2 if bad else 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
