"""Plain-text and Markdown tables of a benchmark report (the dict from :func:`run_benchmark`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional


def _f(value: Optional[float], fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def stage_rows(run: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for s in run["stages"]:
        t, m = s.get("timing"), s.get("memory")
        rows.append([
            s["label"],
            _f(t["median_ms"]) if t else "-",
            _f(t["p90_ms"]) if t else "-",
            str(t["repeats"]) if t else "-",
            _f(m["peak_mb"], "{:.1f}") if m else "-",
            _f(s.get("gmacs"), "{:.3f}"),
            s.get("note", ""),
        ])
    return rows


STAGE_HEADER = ["stage", "median ms", "p90 ms", "n", "peak MB", "GMACs", "note"]


def _table(header: List[str], rows: List[List[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = [i for i, h in enumerate(header) if h not in ("stage", "note", "part", "target", "where", "detail", "result")]

    def fmt(r: List[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def summary_rows(run: Dict[str, Any]) -> tuple[List[str], List[List[str]]]:
    summary = run["summary"]
    baselines = [k for k in ("feature-crop", "image-crop") if summary["per_prompts"] and k in summary["per_prompts"][0]]
    timed = any(e["ovsam"]["time_ms"] is not None for e in summary["per_prompts"])
    header = ["prompts"] + (["OVSAM ms"] if timed else []) + ["OVSAM GMACs", "+branch GMACs"]
    for b in baselines:
        header += ([f"{b} ms"] if timed else []) + [f"{b} GMACs"] + (["time ratio"] if timed else []) + ["GMACs ratio"]
    rows = []
    for e in summary["per_prompts"]:
        row = [str(e["prompts"])] + ([_f(e["ovsam"]["time_ms"], "{:.1f}")] if timed else [])
        row += [_f(e["ovsam"]["gmacs"], "{:.1f}"), _f(e["ovsam"]["gmacs_with_branch"], "{:.1f}")]
        for b in baselines:
            x = e[b]
            row += ([_f(x["time_ms"], "{:.1f}")] if timed else []) + [_f(x["gmacs"], "{:.1f}")]
            row += ([_f(x["time_ratio"], "{:.3f}")] if timed else []) + [_f(x["gmacs_ratio"], "{:.3f}")]
        rows.append(row)
    return header, rows


def params_rows(run: Dict[str, Any]) -> List[List[str]]:
    return [[k, f"{v / 1e6:.2f}"] for k, v in run["params"].items()]


def target_rows(report: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for t in report.get("targets", []):
        measured = t["measured"]
        if measured is None:
            shown = "not measured"
        elif t.get("unit") == "GMACs":
            shown = f"{measured:.1f} GMACs ({100 * t['relative_difference']:+.1f}%)"
        elif t["name"].endswith("_vs_encoder"):
            shown = _pct(measured)
        else:
            shown = f"{measured:.3f}"
        verdict = {True: "PASS", False: "MISS", None: "-"}[t["pass"]]
        what = t["name"] + (f" ({t['baseline']})" if "baseline" in t else "")
        rows.append([what, t["where"], t["target"], shown, verdict, t.get("detail", "")])
    return rows


def render(report: Dict[str, Any], markdown: bool = False) -> str:
    out = []
    env = report["environment"]
    out.append(f"command: {report['command']}")
    out.append(f"model: {report['model']['name']} ({report['model']['backbone']}, {report['model']['weights']}, "
               f"{report['model']['backend']}); device {env['device']}"
               + (f" ({env['gpu']})" if env.get("gpu") else f" ({env['cpu']}, {env['torch_threads']} threads)")
               + f"; precision {report['settings']['precision']}; torch {env['torch']}")
    for run in report["runs"]:
        out.append("")
        out.append(f"== {run['image_size']}x{run['image_size']} input (frame {report['settings']['frame'][1]}x"
                   f"{report['settings']['frame'][0]}), baseline SAM encoder: {run['baseline_sam']}")
        rows = stage_rows(run)
        if report["settings"].get("flops_only"):  # no timing columns
            keep = [0, 5, 6]
            out.append(_table([STAGE_HEADER[i] for i in keep], [[r[i] for i in keep] for r in rows], markdown))
        else:
            out.append(_table(STAGE_HEADER, rows, markdown))
        out.append("")
        out.append(_table(["part", "params (M)"], params_rows(run), markdown))
        header, rows = summary_rows(run)
        out.append("")
        out.append(_table(header, rows, markdown))
        out.append(run["summary"]["note"])
        if run.get("frames"):
            from ovsam_ros.benchmark.frame import FRAME_HEADER, frame_table_rows

            out.append("")
            out.append(_table(FRAME_HEADER, frame_table_rows(run["frames"]), markdown))
            out.append("frame[N] = set_image (preprocess + encode) + predict(N clicks) with host results; same weights "
                       "and frame on both paths; aten ops counted with torch.profiler (CPU side) for one frame.")
        if run.get("everything_kept"):
            out.append(f"everything mode masks kept (random weights): {run['everything_kept']}")
    out.append("")
    out.append(_table(["target", "where", "goal", "measured", "result", "detail"], target_rows(report), markdown))
    out.append(f"elapsed {report['elapsed_s']} s, process peak RSS {report['peak_rss_mb']} MB")
    return "\n".join(out)


def write_json(report: Dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    """``python -m ovsam_ros.benchmark.report BENCH.json [--markdown]``: print the tables of a saved report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.report", description=main.__doc__)
    parser.add_argument("json", type=Path, nargs="+")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    for path in args.json:
        print(render(json.loads(Path(path).read_text(encoding="utf-8")), markdown=args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
