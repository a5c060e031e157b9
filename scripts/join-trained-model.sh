#!/usr/bin/env bash
# Reassemble what scripts/gpu-train.sh left under $OUT on the GPU machine, once
# the device tool has brought it here, into models/, and check it with the library.
#
#   bash scripts/join-trained-model.sh DIR [OUT]
#
# DIR: the folder holding NAME.part00.. and NAME.sha256 (the device tool's
# files_at); OUT: default models/NAME (models/shakespeare-25m.safetensors for
# the default preset). Every part and the whole file are checked against the
# manifest's sha256 (tools/split_file.py join); nothing is written on a mismatch.
# train.log and summary.json, when present, are copied beside it as
# NAME-without-.safetensors.train.log and .summary.json. Then `build/bdh info`
# runs on it when build/bdh exists (make -j2 all).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:?usage: $0 DIR [OUT]}
PY=${PYTHON:-python3}
shopt -s nullglob
manifests=("$DIR"/*.safetensors.sha256)
if [ "${#manifests[@]}" -ne 1 ]; then
    echo "expected one *.safetensors.sha256 in $DIR, found ${#manifests[@]}" >&2
    exit 1
fi
M=${manifests[0]}
NAME=$(basename "$M" .sha256)
OUTF=${2:-$ROOT/models/$NAME}
"$PY" "$ROOT/tools/split_file.py" join "$M" -o "$OUTF"
base=${OUTF%.safetensors}
[ -f "$DIR/train.log" ] && cp "$DIR/train.log" "$base.train.log" && echo "copied $base.train.log"
[ -f "$DIR/summary.json" ] && cp "$DIR/summary.json" "$base.summary.json" && echo "copied $base.summary.json"
if [ -x "$ROOT/build/bdh" ]; then
    "$ROOT/build/bdh" info "$OUTF"
else
    echo "(build/bdh not built: make -j2 all, then build/bdh info $OUTF)"
fi
