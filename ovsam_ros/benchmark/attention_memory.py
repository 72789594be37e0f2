"""Peak memory and time of one ``encode_image`` per SAM2CLIP rel-pos attention (``full`` / ``chunked`` / ``flex``).

    python -m ovsam_ros.benchmark.attention_memory --model rn50x16 --attention full chunked
    python -m ovsam_ros.benchmark.attention_memory --model rn50x16 --device cuda --precision fp16 \\
        --attention full chunked flex --json attention_memory.json

Each attention runs in a fresh model (random weights, the preset's input size) on the inference
path. Memory is :func:`ovsam_ros.benchmark.harness.measure_memory` of one encode after a warm-up
call: on CUDA the allocator's peak above what was allocated before the call (the weights), on the
CPU the sampled resident-set peak above the level before it. The embeddings of every attention are
compared with the first one's (max abs difference), so a faster path that changed the result shows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .report import write_json


def measure(model_name: str, attention: str, device: str, precision: str, repeats: int) -> tuple[dict, Any]:
    import torch

    from ovsam_ros.benchmark.harness import measure_memory, synchronize
    from ovsam_ros.loading import PRESETS
    from ovsam_ros.model.inference import prepare_for_inference
    from ovsam_ros.model.ovsam import OVSAM
    from ovsam_ros.runtime import PRECISIONS, resolve_device

    dev = resolve_device(device)
    dtype = PRECISIONS[precision]
    cfg = PRESETS[model_name]()
    cfg.backbone.pretrained = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = OVSAM(cfg).eval().to(dev)
    prepare_for_inference(model, dtype, attention=attention)
    size = cfg.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    with torch.inference_mode():
        embedding = model.encode_image(x).sam_embedding.float().cpu()  # warm-up (and compile for flex)
        times = []
        for _ in range(repeats):
            synchronize(dev)
            t = time.perf_counter()
            model.encode_image(x)
            synchronize(dev)
            times.append(time.perf_counter() - t)
        memory = measure_memory(lambda: model.encode_image(x), dev)
    row = {"attention": attention, "encode_ms": round(1e3 * statistics.median(times), 2),
           "peak_extra_mb": round(memory.peak_mb, 1), "memory_kind": memory.kind}
    return row, embedding


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.attention_memory",
                                     description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rn50x16", help="model preset (random weights; default rn50x16)")
    parser.add_argument("--attention", nargs="+", default=["full", "chunked"], choices=["full", "chunked", "flex"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's)")
    parser.add_argument("--repeats", type=int, default=1, help="timed encodes per attention after the warm-up")
    parser.add_argument("--json", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m ovsam_ros.benchmark.attention_memory " + " ".join(argv)
    rows, first = [], None
    for attention in args.attention:
        row, embedding = measure(args.model, attention, args.device, args.precision, args.repeats)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the previous model is gone: start the next from the weights alone
        first = embedding if first is None else first
        row["max_abs_diff_vs_first"] = float((embedding - first).abs().max())
        rows.append(row)
        print(f"{attention:<8} encode {row['encode_ms']:>10.1f} ms   peak above the weights {row['peak_extra_mb']:>8.1f} MB"
              f" ({row['memory_kind']})   max |diff| vs {args.attention[0]}: {row['max_abs_diff_vs_first']:.2e}",
              flush=True)
    report = {"command": command, "model": args.model, "device": args.device, "precision": args.precision,
              "rows": rows}
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
