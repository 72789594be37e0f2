#!/usr/bin/env bash
# Issue #13's GPU tables in ONE device call (see ../shared/device/README.md):
#   bash ../shared/device/prepare.sh            # once, on the CPU machine
#   device run, carry ['.devrun'], command:  bash .devrun/run.sh bash tools/gpu_tables.sh "$OUT"
# Every step has its own timeout and writes into OUT (default gpu_tables/); a failing step
# does not stop the others. Total budget ~9 min on an H200. Paste the .md outputs into
# docs/benchmarks.md ("GPU: frame rate"), with the device line from env.txt.
set -u
OUT="${1:-gpu_tables}"; mkdir -p "$OUT"
py=python3
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "   rc=$? in $((SECONDS - t)) s"; tail -n 3 "$OUT/$name.log"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; git rev-parse HEAD 2>/dev/null; } > "$OUT/env.txt" 2>&1

# 1. fp16: stage rows on the inference path + frame[N] plain vs optimised (FPS, aten ops), memory,
#    recognition 80/1203/21843 classes, everything 32x32, SAM-H + CLIP feature-crop baseline.
step fp16 200 $py -m ovsam_ros.bench --model rn50x16 --device cuda --precision fp16 --prompts 1 10 100 \
    --vocab 80 1203 21843 --grid 32 --baseline feature-crop --no-region-branch --repeats 20 --warmup 5 \
    --json "$OUT/fp16.json" --markdown
# 2. the same frame rows in fp32 (stage rows and baselines skipped for time)
step fp32 120 $py -m ovsam_ros.bench --model rn50x16 --device cuda --precision fp32 --prompts 1 10 \
    --vocab 21843 --grid --baseline none --no-region-branch --repeats 10 --warmup 3 --json "$OUT/fp32.json" --markdown
# 3. CUDA graphs via torch.compile: cold start (empty cache), then warm restart (same cache)
rm -rf "$OUT/compile_cache"
step compile_cold 240 $py -m ovsam_ros.benchmark.startup --model rn50x16 --device cuda --precision fp16 \
    --compile reduce-overhead --cache-dir "$OUT/compile_cache" --prompts 10 --frames 30 --json "$OUT/compile_cold.json"
step compile_warm 120 $py -m ovsam_ros.benchmark.startup --model rn50x16 --device cuda --precision fp16 \
    --compile reduce-overhead --cache-dir "$OUT/compile_cache" --prompts 10 --frames 30 --json "$OUT/compile_warm.json"
step eager_startup 60 $py -m ovsam_ros.benchmark.startup --model rn50x16 --device cuda --precision fp16 \
    --prompts 10 --frames 30 --json "$OUT/eager.json"
rm -rf "$OUT/compile_cache"   # large; not needed back
echo "tables: $OUT/fp16.log $OUT/fp32.log; start-up: $OUT/compile_*.json $OUT/eager.json"
