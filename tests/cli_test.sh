#!/usr/bin/env bash
# The bdh command-line tool end to end: exit codes and messages for bad
# input, byte-exact and reproducible output, info, perplexity and trace.
#   bash tests/cli_test.sh [path/to/bdh]     (run from the repository root)
# Ends with "cli: N passed, M failed"; exits non-zero if anything failed.
set -u

BDH=${1:-build/bdh}
TINY=tests/data/golden/tiny.model.safetensors
ODD=tests/data/golden/oddheads.model.safetensors
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }

# expect_error CODE PATTERN CMD...: exit status CODE, stderr has a "bdh: "
# line matching PATTERN, nothing on stdout. stdin is empty unless redirected.
expect_error() {
    local want=$1 pattern=$2
    shift 2
    "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" -eq "$want" ] && grep -q "^bdh: .*$pattern" "$TMP/err" && [ ! -s "$TMP/out" ]; then
        ok
    else
        bad "$* -> exit $rc (want $want, stderr /$pattern/): $(head -c 300 "$TMP/err")"
    fi
}

# expect_ok CMD...: exit status 0, stdout in $TMP/out.
expect_ok() {
    if "$@" >"$TMP/out" 2>"$TMP/err" </dev/null; then
        ok
    else
        bad "$* -> exit $?: $(head -c 300 "$TMP/err")"
        : >"$TMP/out"
    fi
}

size() { wc -c <"$1" | tr -d ' '; }

check() { # check DESCRIPTION TEST...
    local what=$1
    shift
    if "$@"; then ok; else bad "$what"; fi
}

[ -x "$BDH" ] || { echo "cli: $BDH is not built" >&2; exit 1; }

# --- usage errors: exit 2
expect_error 2 "unknown or ambiguous option '--bogus'" "$BDH" generate --bogus
expect_error 2 "unknown option '-x'" "$BDH" generate -m "$TINY" -x -p hi
expect_error 2 "needs a value" "$BDH" generate -m "$TINY" -p hi --temperature
expect_error 2 "unknown command 'frobnicate'" "$BDH" frobnicate
expect_error 2 "unknown" "$BDH" --bogus
expect_error 2 "-n needs a count" "$BDH" generate -m "$TINY" -p hi -n abc
expect_error 2 "top_p" "$BDH" generate -m "$TINY" -p hi --top-p 1.5
expect_error 2 "temperature" "$BDH" generate -m "$TINY" -p hi --temperature -1
expect_error 2 "--threads" "$BDH" generate -m "$TINY" -p hi --threads -2
expect_error 2 "not both" "$BDH" generate -m "$TINY" -p hi -f "$TINY"
expect_error 2 "the prompt is empty" "$BDH" generate -m "$TINY" -p ""
expect_error 2 "the prompt is empty" "$BDH" generate -m "$TINY"
expect_error 2 "exactly one MODEL" "$BDH" info
expect_error 2 "needs a text file" "$BDH" perplexity -m "$TINY"
expect_error 2 "--length needs bytes >= 1" "$BDH" perplexity -m "$TINY" -f "$TINY" --length 0
expect_error 2 "unexpected argument 'extra'" "$BDH" generate -m "$TINY" -p hi extra
"$BDH" >/dev/null 2>"$TMP/err"
check "bdh without a command exits 2 with usage" test $? -eq 2 -a -s "$TMP/err"

# --- runtime errors: exit 1
expect_error 1 "cannot load model '$TMP/missing.safetensors'" "$BDH" generate -m "$TMP/missing.safetensors" -p hi
expect_error 1 "needs a byte-level model (vocab_size 256); this one has 97" "$BDH" generate -m "$ODD" -p hi
expect_error 1 "needs a byte-level model" "$BDH" perplexity -m "$ODD" -f "$TINY"
expect_error 1 "cannot open '$TMP/nope.txt'" "$BDH" generate -m "$TINY" -f "$TMP/nope.txt"
echo "not a model" >"$TMP/junk.safetensors"
expect_error 1 "cannot load model" "$BDH" info "$TMP/junk.safetensors"
printf x >"$TMP/one.txt"
expect_error 1 "at least 2" "$BDH" perplexity -m "$TINY" -f "$TMP/one.txt"
BDH_MODEL="$TMP/missing.safetensors" expect_error 1 "cannot load model" "$BDH" generate -p hi

# --- help and version: exit 0 on stdout
for cmd in "" generate info perplexity trace; do
    expect_ok "$BDH" $cmd --help
    check "bdh $cmd --help prints usage" grep -q "^Usage: bdh" "$TMP/out"
done
expect_ok "$BDH" --version
check "--version prints the version" grep -Eq '^bdh [0-9]+\.[0-9]+\.[0-9]+$' "$TMP/out"

# --- generate: exact byte count, greedy and seeded runs reproducible
expect_ok "$BDH" generate -m "$TINY" -p hello -n 20 --temperature 0
cp "$TMP/out" "$TMP/greedy"
check "-n 20 writes exactly 20 bytes (got $(size "$TMP/greedy"))" test "$(size "$TMP/greedy")" -eq 20
expect_ok "$BDH" generate -m "$TINY" -p hello -n 20 --temperature 0
check "greedy output is identical across runs" cmp -s "$TMP/out" "$TMP/greedy"
printf hello >"$TMP/prompt.txt"
expect_ok "$BDH" generate -m "$TINY" -f "$TMP/prompt.txt" -n 20 --temperature 0
check "-f FILE gives the same output as -p" cmp -s "$TMP/out" "$TMP/greedy"
if printf hello | "$BDH" generate -m "$TINY" -n 20 --temperature 0 >"$TMP/out" 2>"$TMP/err"; then ok; else bad "prompt from stdin"; fi
check "stdin prompt gives the same output as -p" cmp -s "$TMP/out" "$TMP/greedy"
BDH_MODEL=$TINY expect_ok "$BDH" generate -p hello -n 20 --temperature 0
check "BDH_MODEL is the default model" cmp -s "$TMP/out" "$TMP/greedy"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 0
check "-n 0 writes nothing" test ! -s "$TMP/out"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 20 --top-k 1
check "--top-k 1 equals greedy" cmp -s "$TMP/out" "$TMP/greedy"

expect_ok "$BDH" generate -m "$TINY" -p hello -n 40 --temperature 1 --seed 17
cp "$TMP/out" "$TMP/seed17"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 40 --temperature 1 --seed 17
check "same --seed, same output" cmp -s "$TMP/out" "$TMP/seed17"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 40 --temperature 1 --seed 18
check "another --seed, other output" test "$(size "$TMP/out")" -eq 40 -a -n "$(cmp "$TMP/out" "$TMP/seed17" 2>&1)"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 40 --temperature 0.7 --top-k 20 --top-p 0.9 --min-p 0.05 \
    --repeat-penalty 1.2 --repeat-window 8 --seed 3 --threads 1
check "every sampling flag together writes 40 bytes" test "$(size "$TMP/out")" -eq 40

# -v: statistics and the seed on stderr, stdout still only the bytes
"$BDH" generate -m "$TINY" -p hello -n 20 -v --temperature 0 >"$TMP/out" 2>"$TMP/err" </dev/null
check "-v keeps stdout to the generated bytes" cmp -s "$TMP/out" "$TMP/greedy"
check "-v prints decode tok/s" grep -q "^decode: .*tok/s" "$TMP/err"
check "-v prints prefill tok/s" grep -q "^prefill: .*tok/s" "$TMP/err"
check "-v prints the state size" grep -q "^state: .*MiB" "$TMP/err"
check "-v prints the seed" grep -q "^seed: " "$TMP/err"
"$BDH" generate -m "$TINY" -p hello -n 30 -v >"$TMP/out" 2>"$TMP/err" </dev/null
seed=$(sed -n 's/^seed: *//p' "$TMP/err")
"$BDH" generate -m "$TINY" -p hello -n 30 --seed "$seed" >"$TMP/again" 2>/dev/null </dev/null
check "the seed printed by -v reproduces the run" cmp -s "$TMP/out" "$TMP/again"

# --stop: generation ends right after the first occurrence
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0
cp "$TMP/out" "$TMP/greedy60"
stop=$(head -c 8 "$TMP/greedy60" | tail -c 3; printf x)
stop=${stop%x}
if [ "$(printf %s "$stop" | wc -c)" -eq 3 ] && [ "$(printf %s "$stop" | tr -d '\n' | wc -c)" -eq 3 ]; then
    first=$(LC_ALL=C grep -a -b -o -F -- "$stop" "$TMP/greedy60" | head -n 1 | cut -d: -f1)
    want=$((first + 3))
    expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --stop "$stop"
    check "--stop ends at its first occurrence (byte $want, got $(size "$TMP/out"))" test "$(size "$TMP/out")" -eq "$want"
    check "--stop output is a prefix of the full output" cmp -s "$TMP/out" <(head -c "$want" "$TMP/greedy60")
else
    bad "the greedy continuation has a NUL or newline where the --stop test takes its stop string"
fi
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --stop "never in this output, surely"
check "a --stop that never occurs runs to -n" cmp -s "$TMP/out" "$TMP/greedy60"

# --- info
expect_ok "$BDH" info "$TINY"
for field in "n_layer: *2" "n_embd: *32" "n_head: *2" "vocab_size: *256" "parameters: " "dtypes: .*encoder=F32" \
    "weights: " "state: *65536 bytes" "fingerprint: *[0-9a-f]\{16\}" "system: *libbdh [0-9.]* (.*CPU kernels: "; do
    check "info prints $field" grep -q "^$field" "$TMP/out"
done
expect_ok "$BDH" info tests/data/golden/bf16.model.safetensors
check "info shows BF16 tensors" grep -q "lm_head=BF16" "$TMP/out"

# --- perplexity
text=tests/data/golden/README.md
expect_ok "$BDH" perplexity -m "$TINY" -f "$text"
n=$(size "$text")
check "perplexity prints bits per byte and n-1 predictions" grep -Eq "^bits per byte: [0-9]+\.[0-9]{4} \($((n - 1)) predictions\)$" "$TMP/out"
check "perplexity writes no progress bar when stderr is not a terminal" test ! -s "$TMP/err"
expect_ok "$BDH" perplexity -m "$TINY" -f "$text" --offset 100 --length 700 --threads 1
check "--offset/--length score length-1 bytes" grep -Eq "^bits per byte: [0-9.]+ \(699 predictions\)$" "$TMP/out"
# the same bytes cut out by hand: identical result
tail -c +101 "$text" | head -c 700 >"$TMP/cut.txt"
cp "$TMP/out" "$TMP/ppl_range"
expect_ok "$BDH" perplexity -m "$TINY" -f "$TMP/cut.txt"
check "--offset/--length equals scoring the cut-out bytes" cmp -s "$TMP/out" "$TMP/ppl_range"

# --- trace
LONG=tests/data/golden/long.model.safetensors
expect_error 2 "needs an output file" "$BDH" trace -m "$TINY" -p hello
expect_error 2 "needs a text" "$BDH" trace -m "$TINY" -o "$TMP/t.st"
expect_error 2 "not both" "$BDH" trace -m "$TINY" -p hi -f "$TINY" -o "$TMP/t.st"
expect_error 2 "the text is empty" "$BDH" trace -m "$TINY" -p "" -o "$TMP/t.st"
expect_error 2 "--length needs bytes >= 1" "$BDH" trace -m "$TINY" -p hi -o "$TMP/t.st" --length 0
for bad in 1,2 1,2,3,4 a,b,c 1,-2,3 1,,2,3 1,2,3, ""; do
    expect_error 2 "--synapse needs three integers >= 0, LAYER,I,J" "$BDH" trace -m "$TINY" -p hi -o "$TMP/t.st" --synapse "$bad"
done
expect_error 2 "--synapse 0,1,2: layer 0 has no layer below" "$BDH" trace -m "$TINY" -p hi -o "$TMP/t.st" --synapse 0,1,2
expect_error 2 "--synapse 2,1,2: .*layer 2 is outside \[1, 2)" "$BDH" trace -m "$TINY" -p hi -o "$TMP/t.st" --synapse 2,1,2
expect_error 2 "--synapse 1,256,2: .*outside \[0, 256)" "$BDH" trace -m "$TINY" -p hi -o "$TMP/t.st" --synapse 1,256,2
expect_error 1 "needs a byte-level model" "$BDH" trace -m "$ODD" -p hi -o "$TMP/t.st"
expect_error 1 "cannot open '$TMP/nope.txt'" "$BDH" trace -m "$TINY" -f "$TMP/nope.txt" -o "$TMP/t.st"
expect_error 1 "cannot create '$TMP/no/such/dir/t.st'" "$BDH" trace -m "$TINY" -p hi -o "$TMP/no/such/dir/t.st"
check "a failed trace writes no file" test ! -e "$TMP/t.st"

head -c 200 tests/data/golden/README.md >"$TMP/text.txt"
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" -o "$TMP/trace.st" --synapse 1,5,700 --synapse 3,1023,2 --threads 1
check "trace reports what it wrote" grep -Eq "^wrote $TMP/trace.st: 200 tokens, 6 layers x 1024 neurons, mean density x [0-9.]+% y [0-9.]+%, 2 synapses$" "$TMP/out"
check "the trace file is safetensors with the trace format" grep -aq '"format":"bdh-trace-1"' "$TMP/trace.st"
for t in tokens x_offsets x_index x_value y_offsets y_index y_value density synapses sigma; do
    check "the trace holds $t" grep -aq "\"$t\":{\"dtype\"" "$TMP/trace.st"
done
check "the header length is a multiple of 8" test $(( $(head -c 8 "$TMP/trace.st" | od -An -t u8 | tr -d ' ') % 8 )) -eq 0
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" -o "$TMP/again.st" --synapse 1,5,700 --synapse 3,1023,2 --threads 1
check "the same trace twice gives the same bytes" cmp -s "$TMP/trace.st" "$TMP/again.st"
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" -o "$TMP/plain.st" --threads 1
check "without --synapse there are no synapse tensors" test -z "$(grep -a '"sigma"' "$TMP/plain.st")"
head -c 60 "$TMP/text.txt" | tail -c 40 >"$TMP/cut.txt"
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" --offset 20 --length 40 -o "$TMP/range.st" --threads 1
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/cut.txt" -o "$TMP/cut.st" --threads 1
check "--offset/--length equal tracing the cut-out bytes" cmp -s "$TMP/range.st" "$TMP/cut.st"
expect_ok "$BDH" trace -m "$LONG" -p "$(cat "$TMP/cut.txt")" -o "$TMP/prompt.st" --threads 1
check "-p TEXT equals -f FILE" cmp -s "$TMP/prompt.st" "$TMP/cut.st"

# the files against docs/trace-format.md, to the byte (a checker of its own,
# Python's standard library only), with a model path that needs every kind
# of escape in the header
if command -v python3 >/dev/null; then
    spec() { python3 tests/trace_format_check.py "$@" >/dev/null; }
    check "the trace follows docs/trace-format.md" \
        spec "$TMP/trace.st" --tokens "$TMP/text.txt" --model "$LONG" --synapse 1,5,700 --synapse 3,1023,2
    check "the trace without --synapse follows docs/trace-format.md" \
        spec "$TMP/plain.st" --tokens "$TMP/text.txt" --model "$LONG"
    odd="$TMP/"$'q"b\\s\tn\nr\rc\001\037 \303\251\377\177.safetensors'
    cp "$TINY" "$odd"
    printf hello >"$TMP/hello.txt"
    expect_ok "$BDH" trace -m "$odd" -p hello -o "$TMP/odd.st" --synapse 1,2,3
    check "a model path with quotes, backslashes, control and non-UTF-8 bytes follows docs/trace-format.md" \
        spec "$TMP/odd.st" --tokens "$TMP/hello.txt" --model "$odd" --synapse 1,2,3
    check "the path's control characters are escaped as the spec says" \
        grep -aqF '\"b\\s\tn\nr\rc\u0001\u001f ' "$TMP/odd.st"
    python3 -c 'import json, struct, sys
raw = open(sys.argv[1], "rb").read(); n = struct.unpack_from("<Q", raw)[0]
h = json.dumps(json.loads(raw[8:8 + n])).encode(); h += b" " * (-len(h) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])' "$TMP/plain.st" "$TMP/spaced.st"
    refused() { ! python3 tests/trace_format_check.py "$@" >/dev/null 2>&1; }
    check "the checker refuses a header with spaces" refused "$TMP/spaced.st"
else
    echo "cli: trace files not checked against docs/trace-format.md: no python3"
fi

# --png: Python missing, matplotlib missing (a stand-in interpreter), and,
# where Python has matplotlib, the pictures themselves
BDH_PYTHON="$TMP/no-python" "$BDH" trace -m "$TINY" -p hello -o "$TMP/png.st" --png "$TMP/png" >"$TMP/out" 2>"$TMP/err"
check "--png without Python exits 1" test $? -eq 1
check "--png without Python says so" grep -q "^bdh: --png: cannot run '$TMP/no-python'" "$TMP/err"
check "--png without Python still writes the trace" test -s "$TMP/png.st"
if ldd "$BDH" 2>/dev/null | grep -q libasan; then
    # Python cannot load the AddressSanitizer build of libbdh next to this bdh
    echo "cli: --png with Python not checked: $BDH is a sanitizer build"
elif command -v python3 >/dev/null; then
    mkdir -p "$TMP/nompl/matplotlib"
    echo 'raise ModuleNotFoundError("No module named matplotlib (hidden by the test)")' >"$TMP/nompl/matplotlib/__init__.py"
    printf '#!/bin/sh\nPYTHONPATH=%s/nompl:$PYTHONPATH exec python3 "$@"\n' "$TMP" >"$TMP/python-nompl"
    chmod +x "$TMP/python-nompl"
    BDH_PYTHON="$TMP/python-nompl" "$BDH" trace -m "$TINY" -p hello -o "$TMP/png.st" --png "$TMP/png" >"$TMP/out" 2>"$TMP/err"
    check "--png without matplotlib exits 1" test $? -eq 1
    check "--png without matplotlib says so" grep -q "^bdh: --png: matplotlib is missing (pip install matplotlib)" "$TMP/err"
    if python3 -c "import matplotlib, numpy" 2>/dev/null; then
        expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" -o "$TMP/png.st" --synapse 2,3,4 --png "$TMP/png"
        for f in raster_x raster_y density top_bytes top_classes synapses; do
            check "--png draws $f.png" test "$(head -c 4 "$TMP/png/$f.png" | tail -c 3)" = PNG
        done
    else
        echo "cli: --png pictures not checked: python3 lacks matplotlib or numpy"
    fi
fi

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
