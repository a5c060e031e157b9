#!/usr/bin/env bash
# Train the 25M-parameter BDH-GPU (the reference's default configuration) on a
# GPU machine, evaluate it, and leave under $OUT what the device tool can bring
# back: at most 8 files of at most 16 MiB (64 MiB in all), no subfolders.
#
#   bash scripts/gpu-train.sh                    # on the GPU machine, from the repo
#
#   # dry run on a CPU (tiny model, seconds):
#   TRAIN_DEVICE=cpu TRAIN_MINUTES=0.3 TRAIN_PRESET=tiny OUT=/tmp/out \
#       PYTHON=/tmp/tvenv/bin/python bash scripts/gpu-train.sh
#
# Then, here: bash scripts/join-trained-model.sh DIR   (DIR = where the files landed)
#
# Output ($OUT, default gpu-train-out/), 7 files for the default preset:
#   shakespeare-25m.safetensors.part00..03  the best checkpoint (lowest validation
#                                           loss), BF16, 50.6 MB, in parts of 15 MiB
#   shakespeare-25m.safetensors.sha256      manifest for tools/split_file.py join
#   train.log                               everything printed (environment, training,
#                                           evaluations, sample text)
#   summary.json                            the run: config, args, validation losses
#                                           at every evaluation, best, bits per byte
#                                           of the saved file, phase timings
#
# Time: the whole script stays inside TRAIN_BUDGET seconds (default 570, under the
# device tool's 10-minute command limit): training gets TRAIN_MINUTES (default 8,
# cut down if the budget cannot hold it), evaluations included, then the saved file
# is evaluated (windows of 512 and 256, and the whole split as one stream) as long
# as time is left. The trainer stops cleanly on its own clock, or on the SIGTERM of
# its `timeout`, and writes the best checkpoint either way; it also writes it every
# 60 s while it improves, so a hard kill still leaves the last one.
#
# Knobs: TRAIN_MINUTES (8), TRAIN_PRESET (default | small | tiny), TRAIN_DEVICE
# (cuda | cpu), TRAIN_COMPILE (0; 1 adds --compile: compile time counts against
# the budget), TRAIN_ARGS (more flags for tools/train.py, e.g. "--eval-every 50"),
# TRAIN_BUDGET (570 seconds), PYTHON (python3: on the nvidia-h200 image that is the
# one with PyTorch, safetensors and numpy; nothing needs to be carried).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

START=$(date +%s)
R=${OUT:-gpu-train-out}
mkdir -p "$R"
R=$(cd "$R" && pwd)
WORK=${TMPDIR:-/tmp}/bdh-gpu-train
rm -rf "$WORK"
mkdir -p "$WORK"
PY=${PYTHON:-python3}
PRESET=${TRAIN_PRESET:-default}
DEV=${TRAIN_DEVICE:-cuda}
MINUTES=${TRAIN_MINUTES:-8}
BUDGET=${TRAIN_BUDGET:-570}
COMPILE=${TRAIN_COMPILE:-0}
EXTRA=${TRAIN_ARGS:-}
export PYTHONUNBUFFERED=1
if [ "$PRESET" = default ]; then NAME=shakespeare-25m.safetensors; else NAME=shakespeare-$PRESET.safetensors; fi
MODEL=$WORK/$NAME
LOG=$R/train.log
EVALS=$WORK/evals.jsonl
: >"$LOG"
: >"$EVALS"
PHASES=$WORK/phases.txt
: >"$PHASES"

left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "$*" | tee -a "$LOG"; }

# run NAME LIMIT CMD...: CMD under `timeout LIMIT` (SIGTERM, SIGKILL 20 s later),
# output to the log and the terminal; records "NAME rc seconds" in $PHASES.
run() {
    local name=$1 lim=$2
    shift 2
    say "== $name (limit ${lim}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=20 "$lim" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "$name $rc $(($(date +%s) - t0))" >>"$PHASES"
    say "== $name: exit $rc in $(($(date +%s) - t0))s"
    return "$rc"
}

{
    echo "== environment"
    date -u
    uname -a
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "(no git here)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import torch, numpy, safetensors; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__, "safetensors", safetensors.__version__)'
} 2>&1 | tee -a "$LOG"

# training minutes: what was asked, cut so that ~90 s are left for start-up, the
# final save and the evaluations
MAXMIN=$(awk -v b="$BUDGET" 'BEGIN { m = (b - 90) / 60; if (m < 0.1) m = 0.1; printf "%.2f", m }')
EFFMIN=$(awk -v a="$MINUTES" -v m="$MAXMIN" 'BEGIN { printf "%.2f", (a + 0 > m + 0) ? m : a }')
[ "$EFFMIN" != "$(awk -v a="$MINUTES" 'BEGIN { printf "%.2f", a }')" ] &&
    say "TRAIN_MINUTES=$MINUTES does not fit TRAIN_BUDGET=$BUDGET s: training for $EFFMIN min"
TLIM=$(awk -v m="$EFFMIN" 'BEGIN { printf "%d", m * 60 + 60 }')
CFLAG=()
[ "$COMPILE" = 1 ] && CFLAG=(--compile)
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
run train "$TLIM" "$PY" tools/train.py --preset "$PRESET" --device "$DEV" --minutes "$EFFMIN" \
    --out "$MODEL" --json "$WORK/train.json" --checkpoint-every-s 60 "${CFLAG[@]}" $EXTRA

if [ -f "$MODEL" ]; then
    for spec in "windows 512" "windows 256" "stream 256"; do
        read -r mode size <<<"$spec"
        t=$(left)
        [ "$t" -gt 60 ] && t=60
        if [ "$t" -lt 10 ]; then say "== eval $mode $size: skipped, out of time"; continue; fi
        if [ "$mode" = windows ]; then a=(--mode windows --window "$size"); else a=(--mode stream --chunk "$size"); fi
        run "eval-$mode-$size" "$t" "$PY" tools/eval_bpb.py "$MODEL" --device "$DEV" "${a[@]}" --json "$EVALS"
    done
    run split 60 "$PY" tools/split_file.py split "$MODEL" --dir "$R"
else
    say "!! no checkpoint was written ($MODEL): nothing to evaluate or split"
fi

# summary.json: the trainer's record + the evaluations of the saved file + phases
"$PY" - "$WORK/train.json" "$EVALS" "$PHASES" "$R/summary.json" "$START" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys, time
train_json, evals, phases, out, start = sys.argv[1:]
s = {"train": None, "eval_saved_file": [], "phases": []}
if os.path.exists(train_json):
    s["train"] = json.load(open(train_json))
s["eval_saved_file"] = [json.loads(l) for l in open(evals) if l.strip()]
for l in open(phases):
    n, rc, sec = l.split()
    s["phases"].append({"phase": n, "exit": int(rc), "seconds": int(sec)})
s["script_seconds"] = round(time.time() - float(start), 1)
json.dump(s, open(out, "w"), indent=1)
t = s["train"] or {}
print("summary:", json.dumps({"steps": t.get("steps"), "train_seconds": t.get("train_seconds"),
      "stop": t.get("stop_reason"), "best": t.get("best"),
      "bpb": {f"{e['mode']} {e['window'] or e['chunk']}": round(e["bits_per_byte"], 4) for e in s["eval_saved_file"]},
      "script_seconds": s["script_seconds"]}))
EOF

# what will come back: at most 8 files of 16 MiB, 64 MiB in all
n=0; total=0; bad=0
for f in "$R"/*; do
    [ -f "$f" ] || continue
    sz=$(stat -c %s "$f")
    n=$((n + 1)); total=$((total + sz))
    [ "$sz" -gt $((16 * 1024 * 1024)) ] && { say "!! $f is over 16 MiB"; bad=1; }
done
[ "$n" -gt 8 ] && { say "!! $n files under $R: at most 8 come back"; bad=1; }
[ "$total" -gt $((64 * 1024 * 1024)) ] && { say "!! $total bytes under $R: at most 64 MiB come back"; bad=1; }
say "== $n files, $total bytes under $R; $(($(date +%s) - START)) s in all"
# shellcheck disable=SC2012  # plain names, for the log
ls -l "$R" | tee -a "$LOG"
[ -f "$R/$NAME.sha256" ] && [ "$bad" = 0 ]
