#!/usr/bin/env bash
# Issue #13's GPU tables in ONE device call (see ../shared/device/README.md):
#   bash ../shared/device/prepare.sh            # once, on the CPU machine
#   device run, carry ['.devrun'], command:  bash .devrun/run.sh bash tools/gpu_tables.sh "$OUT"
# Dry run of every command on the CPU (tiny model, 1-2 repeats, minutes; checks the script, not speed):
#   bash tools/gpu_tables.sh /tmp/gpu_tables_dry --device cpu --quick
# Every step has its own timeout and writes into OUT (default gpu_tables/); a failing step does not
# stop the others. Step limits add up to 560 s (the device tool allows 600 s per command).
# Fill the "New path" table of docs/benchmarks.md ("Issue #13 targets") from:
#   target row                                   source
#   frame[10] FPS, plain vs optimised, aten ops   fp16.log frame table (fp32.log: the same in fp32)
#   preprocess, encode, predict[1], predict[100]  fp16.log stage rows
#   each further prompt (% of encode)             fp16.log: (predict[10] - predict[1]) / 9 / encode
#   recognition over 21,843 classes               fp16.log recognition rows (share of encode)
#   everything 32x32                              fp16.log everything[32x32]
#   peak memory above the weights                 fp16.json frames[].memory (frame[10] = encode + 10
#                                                 prompts) and attention.log (encode alone, per attention)
#   ratio vs SAM-H + CLIP (feature crop)          fp16.log baseline rows / ratio
#   compile start-up cold / warm, eager           compile_cold.json, compile_warm.json, eager.json
set -u
OUT="${1:-gpu_tables}"; shift || true
DEVICE=cuda; QUICK=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown option $1 (use: OUT [--device cpu|cuda] [--quick])" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
py=${PYTHON:-python3}
if [[ $QUICK == 1 ]]; then  # the same commands, small: tiny model, 1 repeat, small sweeps
  MODEL=tiny; PROMPTS="1 10"; VOCAB="80 21843"; GRID=8; REP=1; WARM=0; FRAMES=2; SCALE=4
else
  MODEL=rn50x16; PROMPTS="1 10 100"; VOCAB="80 1203 21843"; GRID=32; REP=20; WARM=5; FRAMES=30; SCALE=1
fi
PREC=fp16; [[ $DEVICE == cpu ]] && PREC=bf16   # fp16 convolutions are slow or missing on CPUs
step() { local name=$1 limit=$(( $2 * SCALE )); shift 2; echo "== $name (limit ${limit}s)"; local t=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?; echo "   rc=$rc in $((SECONDS - t)) s"
  tail -n 3 "$OUT/$name.log"; [[ $rc == 0 ]] || FAILED="$FAILED $name"; }
FAILED=""
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi";
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; git rev-parse HEAD 2>/dev/null
  echo "device $DEVICE quick $QUICK model $MODEL"; } > "$OUT/env.txt" 2>&1

# 1. fp16: stage rows on the inference path + frame[N] plain vs optimised (FPS, aten ops), memory,
#    recognition 80/1203/21843 classes, everything 32x32, SAM-H + CLIP feature-crop baseline.
step fp16 200 $py -m ovsam_ros.bench --model $MODEL --device $DEVICE --precision $PREC --prompts $PROMPTS \
    --vocab $VOCAB --grid $GRID --baseline feature-crop --no-region-branch --repeats $REP --warmup $WARM \
    --json "$OUT/fp16.json" --markdown
# 2. the same frame rows in fp32 (stage rows' baselines skipped for time)
step fp32 50 $py -m ovsam_ros.bench --model $MODEL --device $DEVICE --precision fp32 --prompts 1 10 \
    --vocab 21843 --grid --baseline none --no-region-branch --repeats $(( REP / 2 + 1 )) --warmup $WARM \
    --json "$OUT/fp32.json" --markdown
# 3. peak memory of one encode per SAM2CLIP attention: the previous full bias, query blocks, FlexAttention
step attention 50 $py -m ovsam_ros.benchmark.attention_memory --model $MODEL --device $DEVICE --precision $PREC \
    --attention full chunked flex --repeats $(( REP / 4 + 1 )) --json "$OUT/attention.json"
# 4. CUDA graphs via torch.compile: cold start (empty cache), then warm restart (same cache), eager.
#    (On a CPU reduce-overhead is ignored by design: the dry run only checks the commands.)
rm -rf "$OUT/compile_cache"
step compile_cold 170 $py -m ovsam_ros.benchmark.startup --model $MODEL --device $DEVICE --precision $PREC \
    --compile reduce-overhead --cache-dir "$OUT/compile_cache" --prompts 10 --frames $FRAMES --json "$OUT/compile_cold.json"
step compile_warm 60 $py -m ovsam_ros.benchmark.startup --model $MODEL --device $DEVICE --precision $PREC \
    --compile reduce-overhead --cache-dir "$OUT/compile_cache" --prompts 10 --frames $FRAMES --json "$OUT/compile_warm.json"
step eager_startup 30 $py -m ovsam_ros.benchmark.startup --model $MODEL --device $DEVICE --precision $PREC \
    --prompts 10 --frames $FRAMES --json "$OUT/eager.json"
du -sh "$OUT/compile_cache" >> "$OUT/env.txt" 2>/dev/null
rm -rf "$OUT/compile_cache"   # large; not needed back
echo "tables: $OUT/fp16.log $OUT/fp32.log $OUT/attention.log; start-up: $OUT/compile_*.json $OUT/eager.json"
[[ -z $FAILED ]] || { echo "FAILED steps:$FAILED"; exit 1; }
