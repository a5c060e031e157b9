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
expect_error 1 "cannot load model: cannot open '$TMP/missing.safetensors'" "$BDH" generate -m "$TMP/missing.safetensors" -p hi
check "the path is named once" test "$(grep -o "$TMP/missing.safetensors" "$TMP/err" | wc -l)" -eq 1
expect_error 1 "is not a safetensors file" "$BDH" info tests/data/golden/README.md
expect_error 2 "--threads needs a count from 0 (all cores) to 4096, not '100000'" "$BDH" generate -p hi --threads 100000
expect_error 2 "--threads needs a count from 0 (all cores) to 4096" "$BDH" perplexity -m "$TINY" -f "$TINY" --threads 100000
"$BDH" perplexity --help > "$TMP/help" 2>&1
check "perplexity --help prints 10%, not 10%%" grep -q "last 10%," "$TMP/help"
expect_error 1 "needs a byte-level model (vocab_size 256); this one has 97" "$BDH" generate -m "$ODD" -p hi
expect_error 1 "needs a byte-level model" "$BDH" perplexity -m "$ODD" -f "$TINY"
expect_error 1 "cannot open '$TMP/nope.txt'" "$BDH" generate -m "$TINY" -f "$TMP/nope.txt"
echo "not a model" >"$TMP/junk.safetensors"
expect_error 1 "cannot load model" "$BDH" info "$TMP/junk.safetensors"
printf x >"$TMP/one.txt"
expect_error 1 "at least 2" "$BDH" perplexity -m "$TINY" -f "$TMP/one.txt"
BDH_MODEL="$TMP/missing.safetensors" expect_error 1 "cannot load model" "$BDH" generate -p hi

# --- help and version: exit 0 on stdout
for cmd in "" generate info perplexity quantize trace chat; do
    expect_ok "$BDH" $cmd --help
    check "bdh $cmd --help prints usage" grep -q "^Usage: bdh" "$TMP/out"
done
# every command's help fits in 80 columns (the commands as bdh --help lists them)
"$BDH" --help >"$TMP/help" 2>&1
commands=$(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\)  .*/\1/p' "$TMP/help")
check "bdh --help lists its commands" test -n "$commands"
# docs/cli.md's intro counts them and shows each
count=(zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen)
n=$(echo $commands | wc -w)
check "docs/cli.md says it has ${count[$n]:-$n} commands" grep -q "It has ${count[$n]:-$n} commands" docs/cli.md
for cmd in $commands; do
    check "docs/cli.md's intro shows bdh $cmd" grep -q "^bdh $cmd " docs/cli.md
done
for cmd in "" $commands; do
    expect_ok "$BDH" $cmd --help
    wide=$(expand "$TMP/out" | awk 'length($0) > 80')
    check "bdh $cmd --help has lines over 80 columns: $wide" test -z "$wide"
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
expect_error 1 "cannot create a file beside '$TMP/no/such/dir/t.st'" "$BDH" trace -m "$TINY" -p hi -o "$TMP/no/such/dir/t.st"
cp "$TINY" "$TMP/model-copy.st"
expect_error 2 "-o '$TMP/model-copy.st' is one of the inputs" "$BDH" trace -m "$TMP/model-copy.st" -p hi -o "$TMP/model-copy.st"
ln -sf "$TMP/model-copy.st" "$TMP/model-link.st"
expect_error 2 "is one of the inputs" "$BDH" trace -m "$TMP/model-copy.st" -p hi -o "$TMP/model-link.st"
printf 'some text' > "$TMP/in.txt"
expect_error 2 "is one of the inputs" "$BDH" trace -m "$TINY" -f "$TMP/in.txt" -o "$TMP/in.txt"
check "a refused -o leaves the model as it was" cmp -s "$TINY" "$TMP/model-copy.st"
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
printf 'an older file' > "$TMP/over.st"
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" -o "$TMP/over.st" --synapse 1,5,700 --synapse 3,1023,2 --threads 1
check "a trace over an existing file replaces it whole" cmp -s "$TMP/trace.st" "$TMP/over.st"
check "and leaves no temporary file beside it" test -z "$(ls "$TMP" | grep 'over.st.tmp')"
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

# --- quantize and --weights
SHAKE=models/shakespeare.safetensors
VALID="models/tinyshakespeare.txt --offset 1003854 --length 6000 --window 256"
for cmd in "generate -m $TINY -p hi" "perplexity -m $TINY -f $TINY" "trace -m $TINY -p hi -o $TMP/w.st" "info $TINY"; do
    expect_error 2 "--weights needs f32, bf16, f16, q8_0 or stored, not 'int4'" "$BDH" $cmd --weights int4
done
expect_error 2 "--weights needs f32, bf16, f16, q8_0 or stored, not 'Q8_0'" "$BDH" generate -m "$TINY" -p hi --weights Q8_0
expect_error 2 "needs a value" "$BDH" info "$TINY" --weights
expect_error 2 "quantize needs two arguments, IN and OUT" "$BDH" quantize
expect_error 2 "quantize needs two arguments, IN and OUT" "$BDH" quantize "$TINY"
expect_error 2 "quantize needs two arguments, IN and OUT" "$BDH" quantize "$TINY" "$TMP/a.st" "$TMP/b.st"
expect_error 2 "--type needs q8_0 (the one quantization written), not 'bf16'" "$BDH" quantize --type bf16 "$TINY" "$TMP/q.st"
expect_error 2 "unknown or ambiguous option '--bogus'" "$BDH" quantize --bogus "$TINY" "$TMP/q.st"
expect_error 1 "cannot quantize '$TMP/missing.safetensors': cannot open" "$BDH" quantize "$TMP/missing.safetensors" "$TMP/q.st"
expect_error 1 "cannot quantize '$TMP/junk.safetensors': .*is not a safetensors file" "$BDH" quantize "$TMP/junk.safetensors" "$TMP/q.st"
expect_error 1 "the output '$TINY' is the input (BDH_ERR_INVALID_ARGUMENT)" "$BDH" quantize "$TINY" "$TINY"
ln -s "$PWD/$TINY" "$TMP/tiny-link.safetensors"
expect_error 1 "is the input" "$BDH" quantize "$TINY" "$TMP/tiny-link.safetensors"
check "quantize onto its input leaves the input as it was" cmp -s "$TINY" "$TMP/tiny-link.safetensors"
expect_error 1 "cannot create a file beside '$TMP/no/such/dir/q.st'" "$BDH" quantize "$TINY" "$TMP/no/such/dir/q.st"
check "a failed quantize writes no file" test ! -e "$TMP/q.st"
echo keep >"$TMP/kept.st"
expect_error 1 "cannot quantize" "$BDH" quantize "$TMP/missing.safetensors" "$TMP/kept.st"
check "a failed quantize leaves an existing OUT as it was" test "$(cat "$TMP/kept.st")" = keep

expect_ok "$BDH" quantize "$TINY" "$TMP/tiny.q8.st"
check "quantize reports what it wrote" grep -Eq "^wrote $TMP/tiny.q8.st: encoder, encoder_v, decoder as Q8_0; [0-9.]+ MiB \(from 0.16 MiB\)$" "$TMP/out"
check "quantize leaves no temporary file" test "$(ls "$TMP" | grep -c tmp-)" -eq 0
expect_ok "$BDH" quantize --type q8_0 "$TINY" "$TMP/tiny.q8.again.st"
check "quantizing twice gives the same bytes" cmp -s "$TMP/tiny.q8.st" "$TMP/tiny.q8.again.st"
expect_error 1 "'$TMP/tiny.q8.st' is already Q8_0" "$BDH" quantize "$TMP/tiny.q8.st" "$TMP/q.st"
expect_ok "$BDH" quantize tests/data/golden/bf16.model.safetensors "$TMP/bf16.q8.st"
expect_ok "$BDH" info "$TMP/tiny.q8.st"
check "info shows the Q8_0 tensors of a quantized file" \
    grep -q "^dtypes: *embed.weight=F32 encoder=Q8_0 encoder_v=Q8_0 decoder=Q8_0 lm_head=F32" "$TMP/out"
check "info holds a quantized file as f32 by default" grep -q "^weights: *164352 bytes .* held as f32$" "$TMP/out"
expect_ok "$BDH" info --weights stored "$TMP/tiny.q8.st"
q8_bytes=$(sed -n 's/^weights: *\([0-9]*\) bytes.*held as stored$/\1/p' "$TMP/out")
check "info --weights stored holds Q8_0: fewer bytes (${q8_bytes:-none})" test "${q8_bytes:-164352}" -lt 164352
expect_ok "$BDH" info --weights q8_0 "$TINY"
check "--weights q8_0 holds the float file in the bytes of the quantized one" grep -q "^weights: *$q8_bytes bytes .* held as q8_0$" "$TMP/out"
for w in f32 bf16 f16 q8_0 stored; do
    expect_ok "$BDH" info --weights "$w" "$TINY"
    check "info --weights $w says how the weights are held" grep -q "^weights: .* held as $w$" "$TMP/out"
done

# generate: the quantized file as stored is the float file quantized at load
expect_ok "$BDH" quantize "$SHAKE" "$TMP/shake.q8.st"
expect_ok "$BDH" generate -m "$SHAKE" -p "ROMEO:" -n 200 --seed 11 --weights q8_0
cp "$TMP/out" "$TMP/gen_q8"
check "generate --weights q8_0 writes 200 bytes" test "$(size "$TMP/gen_q8")" -eq 200
expect_ok "$BDH" generate -m "$TMP/shake.q8.st" -p "ROMEO:" -n 200 --seed 11 --weights stored
check "a quantized file run as stored gives the text of --weights q8_0 on the original" cmp -s "$TMP/out" "$TMP/gen_q8"
expect_ok "$BDH" generate -m "$TMP/shake.q8.st" -p "ROMEO:" -n 200 --seed 11 --weights q8_0
check "a quantized file run as q8_0 gives the same text" cmp -s "$TMP/out" "$TMP/gen_q8"
expect_ok "$BDH" generate -m "$SHAKE" -p "ROMEO:" -n 200 --seed 11 --weights f32
cp "$TMP/out" "$TMP/gen_f32"
expect_ok "$BDH" generate -m "$SHAKE" -p "ROMEO:" -n 200 --seed 11
check "--weights f32 is the default" cmp -s "$TMP/out" "$TMP/gen_f32"
for w in bf16 f16; do
    expect_ok "$BDH" generate -m "$SHAKE" -p "ROMEO:" -n 50 --seed 11 --weights $w
    check "generate --weights $w writes 50 bytes" test "$(size "$TMP/out")" -eq 50
done
"$BDH" generate -m "$TMP/tiny.q8.st" -p hello -n 5 -v --weights stored >"$TMP/out" 2>"$TMP/err" </dev/null
check "-v says how the weights are held" grep -q "^weights: stored, 0.09 MiB in memory$" "$TMP/err"

# perplexity: Q8_0 within a few percent of float32; as stored, exactly the at-load result
bpb() { sed -n 's/^bits per byte: \([0-9.]*\) .*/\1/p' "$TMP/out"; }
expect_ok "$BDH" perplexity -m "$SHAKE" -f $VALID
f32_bpb=$(bpb)
expect_ok "$BDH" perplexity -m "$SHAKE" -f $VALID --weights q8_0
q8_bpb=$(bpb)
expect_ok "$BDH" perplexity -m "$TMP/shake.q8.st" -f $VALID --weights stored
stored_bpb=$(bpb)
echo "cli: shakespeare validation, 6000 bytes in 256-byte windows: bits per byte f32 ${f32_bpb:-?}, q8_0 ${q8_bpb:-?}, q8_0 file as stored ${stored_bpb:-?}"
check "perplexity q8_0 ($q8_bpb) within 3% of f32 ($f32_bpb)" \
    awk -v a="${f32_bpb:-0}" -v b="${q8_bpb:-99}" 'BEGIN { d = (b - a) / a; exit !(a > 0 && d < 0.03 && d > -0.03) }'
check "perplexity of the quantized file as stored equals q8_0 at load" test -n "$q8_bpb" -a "$stored_bpb" = "$q8_bpb"
expect_ok "$BDH" perplexity -m "$TMP/shake.q8.st" -f $VALID --weights f32
check "the quantized file as f32 (dequantized) scores like q8_0 (got $(bpb))" \
    awk -v a="${q8_bpb:-0}" -v b="$(bpb)" 'BEGIN { d = b - a; exit !(a > 0 && d < 0.001 && d > -0.001) }'

# trace: --weights reaches the model (one model path for both: the trace holds it)
cp "$TINY" "$TMP/model.st"
expect_ok "$BDH" trace -m "$TMP/model.st" -p hello -o "$TMP/q8a.st" --weights q8_0 --threads 1
expect_ok "$BDH" trace -m "$TMP/model.st" -p hello -o "$TMP/f32.st" --threads 1
cp "$TMP/tiny.q8.st" "$TMP/model.st"
expect_ok "$BDH" trace -m "$TMP/model.st" -p hello -o "$TMP/q8b.st" --weights stored --threads 1
check "trace of the quantized file as stored equals trace --weights q8_0 of the original" cmp -s "$TMP/q8a.st" "$TMP/q8b.st"
check "trace --weights q8_0 is not the float32 trace" test -n "$(cmp "$TMP/q8a.st" "$TMP/f32.st" 2>&1)"

# --png: Python missing, matplotlib missing (a stand-in interpreter), and,
# where Python has matplotlib, the pictures themselves
BDH_PYTHON="$TMP/no-python" "$BDH" trace -m "$TINY" -p hello -o "$TMP/png.st" --png "$TMP/png" >"$TMP/out" 2>"$TMP/err"
check "--png without Python exits 1" test $? -eq 1
check "--png without Python says so" grep -q "^bdh: --png: cannot run '$TMP/no-python'" "$TMP/err"
check "--png without Python still writes the trace" test -s "$TMP/png.st"
# A small address space (ulimit -v): OpenBLAS's threads used to retry their
# 128 MiB buffers for ever. The tool must finish, with the same text.
if ldd "$BDH" 2>/dev/null | grep -q libasan; then
    echo "cli: ulimit -v not checked: $BDH is a sanitizer build (ASan reserves terabytes of address space)"
else
    "$BDH" generate -m "$TINY" -p "To be" -n 20 --temperature 0 --threads 1 >"$TMP/free.txt" 2>&1
    for limit in 60000 120000 300000; do
        (ulimit -v $limit; timeout 60 "$BDH" generate -m "$TINY" -p "To be" -n 20 --temperature 0 --threads 1) >"$TMP/limited.txt" 2>&1
        check "ulimit -v $limit: finishes with the same text" cmp -s "$TMP/free.txt" "$TMP/limited.txt"
    done
fi

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

# --- options each checked on its own (the sampling flags above only ran together)
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0
cp "$TMP/out" "$TMP/greedy60"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 1 --top-p 0.000001 --seed 5
check "--top-p close to 0 keeps only the most likely byte: greedy" cmp -s "$TMP/out" "$TMP/greedy60"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 1 --min-p 1 --seed 5
check "--min-p 1 keeps only the most likely byte: greedy" cmp -s "$TMP/out" "$TMP/greedy60"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --repeat-penalty 5
check "--repeat-penalty 5 changes the greedy text" test -n "$(cmp "$TMP/out" "$TMP/greedy60" 2>&1)"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --repeat-penalty 5 --repeat-window 0
check "--repeat-window 0: the penalty sees nothing, greedy" cmp -s "$TMP/out" "$TMP/greedy60"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --threads 1
check "--threads 1 gives the text of all cores" cmp -s "$TMP/out" "$TMP/greedy60"
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --threads 2
check "--threads 2 gives the same text" cmp -s "$TMP/out" "$TMP/greedy60"
expect_error 2 "repeat_penalty" "$BDH" generate -m "$TINY" -p hi --repeat-penalty 0
expect_error 2 "--repeat-window needs an integer >= 0" "$BDH" generate -m "$TINY" -p hi --repeat-window -1
expect_error 2 "--top-k needs an integer >= 0" "$BDH" generate -m "$TINY" -p hi --top-k x
expect_error 2 "min_p" "$BDH" generate -m "$TINY" -p hi --min-p 2
expect_error 2 "--seed needs an unsigned 64-bit integer" "$BDH" generate -m "$TINY" -p hi --seed -1
expect_error 2 "--stop needs a non-empty string" "$BDH" generate -m "$TINY" -p hi --stop ""
# perplexity --window: two copies of one window score what one copy scores
head -c 300 tests/data/golden/README.md >"$TMP/w1.txt"
cat "$TMP/w1.txt" "$TMP/w1.txt" >"$TMP/w2.txt"
expect_ok "$BDH" perplexity -m "$TINY" -f "$TMP/w1.txt"
one=$(sed -n 's/^bits per byte: \([0-9.]*\) .*/\1/p' "$TMP/out")
expect_ok "$BDH" perplexity -m "$TINY" -f "$TMP/w2.txt" --window 300
check "--window 300 over two copies: each window from a zero state (${one:-?} and 598 predictions)" \
    grep -q "^bits per byte: ${one:-none} (598 predictions)$" "$TMP/out"
expect_ok "$BDH" perplexity -m "$TINY" -f "$TMP/w2.txt"
check "without --window the second copy is scored in context (another result)" \
    test -n "$one" -a "$(grep -c "^bits per byte: $one " "$TMP/out")" -eq 0
expect_error 2 "--window needs bytes >= 2, not '1'" "$BDH" perplexity -m "$TINY" -f "$TMP/w2.txt" --window 1
expect_error 2 "--offset needs bytes >= 0" "$BDH" perplexity -m "$TINY" -f "$TMP/w2.txt" --offset -1

# --- --device and --cuda-device on every command that loads a model
loaders=("generate -m $TINY -p hi -n 5" "info $TINY" "perplexity -m $TINY -f $TMP/w1.txt" "trace -m $TINY -p hi -o $TMP/dev.st"
    "chat -m $TINY -n 5" "serve -m $TINY --port 0")
for cmd in "${loaders[@]}"; do
    expect_error 2 "--device needs cpu or cuda, not 'gpu'" "$BDH" $cmd --device gpu
    expect_error 2 "--cuda-device 1 needs --device cuda" "$BDH" $cmd --cuda-device 1
    expect_error 2 "--cuda-device needs a device number >= 0, not '-1'" "$BDH" $cmd --device cuda --cuda-device -1
done
# -m, --threads, --weights: one parser (parse_model_option) on all of them
for cmd in "${loaders[@]}"; do
    expect_error 2 "--weights needs f32, bf16, f16, q8_0 or stored, not 'int4'" "$BDH" $cmd --weights int4
    [ "${cmd%% *}" = info ] && continue # info runs nothing: no -m, no --threads
    expect_error 2 "--threads needs a count from 0 (all cores) to 4096, not '4097'" "$BDH" $cmd --threads 4097
    expect_error 1 "cannot load model: .*missing.st" "$BDH" $cmd --model "$TMP/missing.st"
done
expect_error 2 "unknown or ambiguous option '--threads'" "$BDH" info "$TINY" --threads 1
expect_error 2 "unknown option '-m'" "$BDH" info -m "$TINY"
for cmd in "perplexity -m $TINY -f $TMP/w1.txt" "trace -m $TINY -p hi -o $TMP/dev.st" "serve -m $TINY --port 0"; do
    expect_error 2 "unknown option '-v'" "$BDH" $cmd -v # -v is generate's and chat's
done
if "$BDH" info "$TINY" | grep -q "CUDA: not built"; then
    for cmd in "${loaders[@]}"; do
        expect_error 1 "cannot load model: this libbdh was built without CUDA (rebuild with make CUDA=1)" "$BDH" $cmd --device cuda
        expect_error 1 "built without CUDA" "$BDH" $cmd --device cuda --cuda-device 0
    done
    check "a refused --device cuda writes no trace" test ! -e "$TMP/dev.st"
else
    echo "cli: --device cuda not checked: this libbdh has CUDA (tests/cuda runs it on a GPU)"
fi
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --device cpu
check "--device cpu is the default" cmp -s "$TMP/out" "$TMP/greedy60"
"$BDH" generate -m "$TINY" -p hello -n 5 -v --device cpu >/dev/null 2>"$TMP/err" </dev/null
check "-v says the device" grep -q "^device:  cpu$" "$TMP/err"
expect_ok "$BDH" info --device cpu "$TINY"
check "info says the device" grep -q "^device: *cpu$" "$TMP/out"
expect_ok "$BDH" perplexity -m "$TINY" -f "$TMP/w1.txt" --device cpu
check "perplexity --device cpu is the default" grep -q "^bits per byte: $one " "$TMP/out"
expect_ok "$BDH" trace -m "$LONG" -f "$TMP/text.txt" -o "$TMP/dev.st" --threads 1 --device cpu
check "trace --device cpu is the default" cmp -s "$TMP/dev.st" "$TMP/plain.st"

# --- generate --echo: the prompt, then the text
expect_ok "$BDH" generate -m "$TINY" -p hello -n 60 --temperature 0 --echo
check "--echo writes the prompt before the generated bytes" cmp -s "$TMP/out" <(printf hello; cat "$TMP/greedy60")
if printf hello | "$BDH" generate -m "$TINY" -n 60 --temperature 0 --echo >"$TMP/out" 2>"$TMP/err"; then ok; else bad "--echo with stdin"; fi
check "--echo of a prompt from standard input" cmp -s "$TMP/out" <(printf hello; cat "$TMP/greedy60")
expect_ok "$BDH" generate -m "$TINY" -p hello -n 0 --echo
check "--echo -n 0 writes the prompt alone" test "$(cat "$TMP/out")" = hello

# --- chat: usage and runtime errors
expect_error 2 "unknown or ambiguous option '--bogus'" "$BDH" chat -m "$TINY" --bogus
expect_error 2 "unexpected argument 'extra'" "$BDH" chat -m "$TINY" extra
expect_error 2 "top_p" "$BDH" chat -m "$TINY" --top-p 0
expect_error 2 "-n needs a count" "$BDH" chat -m "$TINY" -n -3
expect_error 2 "--weights needs f32, bf16, f16, q8_0 or stored, not 'int4'" "$BDH" chat -m "$TINY" --weights int4
expect_error 2 "--threads needs a count" "$BDH" chat -m "$TINY" --threads x
expect_error 2 "needs a value" "$BDH" chat -m "$TINY" --save-state
expect_error 2 "--save-state '$TMP/model-copy.st' is the model" "$BDH" chat -m "$TMP/model-copy.st" --save-state "$TMP/model-copy.st"
expect_error 1 "needs a byte-level model" "$BDH" chat -m "$ODD"
expect_error 1 "cannot open '$TMP/nostate.bin'" "$BDH" chat -m "$TINY" --load-state "$TMP/nostate.bin"
expect_ok "$BDH" chat -m "$TINY"
check "chat on empty input exits 0 and writes nothing" test ! -s "$TMP/out"

# --- chat over two turns is generate over the stream (greedy)
G="--temperature 0 -n 120"
printf 'ROMEO:\n' >"$TMP/l1"
printf 'JULIET:\n' >"$TMP/l2"
printf 'Nurse:\n' >"$TMP/l3"
"$BDH" chat -m "$SHAKE" $G <"$TMP/l1" >"$TMP/r1" 2>"$TMP/err"
check "chat of one line exits 0" test $? -eq 0
expect_ok "$BDH" generate -m "$SHAKE" -f "$TMP/l1" $G --stop $'\n\n'
check "chat's first reply is generate's text for that line" cmp -s "$TMP/out" "$TMP/r1"
check "the reply ends at the default stop, a blank line" test "$(tail -c 2 "$TMP/r1" | od -An -c | tr -d ' ')" = '\n\n'
cat "$TMP/l1" "$TMP/l2" | "$BDH" chat -m "$SHAKE" $G -v >"$TMP/r12" 2>"$TMP/err12"
check "chat of two lines exits 0" test $? -eq 0
check "the first of two replies is the reply of one" cmp -s "$TMP/r1" <(head -c "$(size "$TMP/r1")" "$TMP/r12")
tail -c +$(($(size "$TMP/r1") + 1)) "$TMP/r12" >"$TMP/r2"
cat "$TMP/l1" "$TMP/r1" "$TMP/l2" >"$TMP/stream12"
expect_ok "$BDH" generate -m "$SHAKE" -f "$TMP/stream12" $G --stop $'\n\n'
check "the second reply is generate's text over line 1, reply 1, line 2 (greedy)" cmp -s "$TMP/out" "$TMP/r2"
check "the second reply is not empty" test -s "$TMP/r2"
whole=$(( $(size "$TMP/stream12") + $(size "$TMP/r2") ))
check "-v: after two turns the position is the bytes of the stream, $whole: nothing was fed twice" \
    grep -q "^turn 2: 8 bytes fed, $(size "$TMP/r2") generated (.*), position $whole$" "$TMP/err12"
check "-v says the starting position" grep -q "^position: 0$" "$TMP/err12"
cat "$TMP/l1" "$TMP/l2" | "$BDH" chat -m "$SHAKE" $G --echo >"$TMP/echoed" 2>/dev/null
check "chat --echo writes the whole stream: lines and replies" cmp -s "$TMP/echoed" <(cat "$TMP/stream12" "$TMP/r2")

# sampled: turn 1 (position 0) draws with the seed itself, as generate does
S="--temperature 0.8 --seed 5 -n 120"
"$BDH" chat -m "$SHAKE" $S <"$TMP/l1" >"$TMP/s1" 2>/dev/null
expect_ok "$BDH" generate -m "$SHAKE" -f "$TMP/l1" $S --stop $'\n\n'
check "chat's first sampled reply is generate's with the same --seed" cmp -s "$TMP/out" "$TMP/s1"
ALL="--temperature 0.7 --top-k 20 --top-p 0.9 --min-p 0.05 --repeat-penalty 1.2 --repeat-window 8 --seed 3 --threads 1 --weights q8_0 --device cpu -n 80"
"$BDH" chat -m "$SHAKE" $ALL <"$TMP/l1" >"$TMP/s1" 2>/dev/null
expect_ok "$BDH" generate -m "$SHAKE" -f "$TMP/l1" $ALL --stop $'\n\n'
check "chat passes every sampling, --threads, --weights and --device option on as generate does" cmp -s "$TMP/out" "$TMP/s1"
"$BDH" chat -m "$SHAKE" --temperature 0 -n 300 --stop e --stop o <"$TMP/l1" >"$TMP/s1" 2>/dev/null
expect_ok "$BDH" generate -m "$SHAKE" -f "$TMP/l1" --temperature 0 -n 300 --stop e --stop o
check "chat --stop replaces the default stop (repeatable)" cmp -s "$TMP/out" "$TMP/s1"
check "and the reply ends at one" grep -q '[eo]$' "$TMP/s1"
cat "$TMP/l1" "$TMP/l2" | "$BDH" chat -m "$SHAKE" -n 0 -v >"$TMP/out" 2>"$TMP/err"
check "chat -n 0: no replies, the lines are fed all the same (position 15)" \
    test ! -s "$TMP/out" -a -n "$(grep "^turn 2: 8 bytes fed, 0 generated .*position 15$" "$TMP/err")"
printf 'ROMEO:' | "$BDH" chat -m "$SHAKE" $G -v >/dev/null 2>"$TMP/err"
check "a last line without a newline is fed as it is (6 bytes)" grep -q "^turn 1: 6 bytes fed" "$TMP/err"

# --- save, load, continue: the same bytes as one unbroken run
for mode in "$G" "$S"; do
    cat "$TMP/l1" "$TMP/l2" "$TMP/l3" | "$BDH" chat -m "$SHAKE" $mode >"$TMP/unbroken" 2>/dev/null
    rm -f "$TMP/st.bin"
    cat "$TMP/l1" "$TMP/l2" | "$BDH" chat -m "$SHAKE" $mode --save-state "$TMP/st.bin" >"$TMP/part1" 2>/dev/null
    "$BDH" chat -m "$SHAKE" $mode --load-state "$TMP/st.bin" --save-state "$TMP/st.bin" <"$TMP/l3" >"$TMP/part2" 2>/dev/null
    check "save after two turns, load, third turn = one run of three ($mode)" \
        cmp -s "$TMP/unbroken" <(cat "$TMP/part1" "$TMP/part2")
done
check "--save-state leaves no temporary file" test -z "$(ls "$TMP" | grep 'st.bin.tmp')"
"$BDH" chat -m "$SHAKE" --load-state "$TMP/st.bin" -n 0 -v </dev/null >/dev/null 2>"$TMP/err"
check "-v after --load-state says where the stream resumes" \
    grep -q "^position: $(( $(cat "$TMP/l1" "$TMP/l2" "$TMP/l3" | wc -c) + $(size "$TMP/unbroken") ))$" "$TMP/err"
# the state is written after every turn: wait for the first turn's file, copy it, then send line 2
rm -f "$TMP/turn.bin"
{
    cat "$TMP/l1"
    for _ in $(seq 300); do [ -e "$TMP/turn.bin" ] && break; sleep 0.1; done
    cp "$TMP/turn.bin" "$TMP/after1.bin"
    cat "$TMP/l2"
} | "$BDH" chat -m "$SHAKE" $G --save-state "$TMP/turn.bin" >/dev/null 2>&1
"$BDH" chat -m "$SHAKE" $G --load-state "$TMP/after1.bin" <"$TMP/l2" >"$TMP/out" 2>/dev/null
check "the state saved after turn 1, loaded, gives turn 2's reply" cmp -s "$TMP/out" "$TMP/r2"
# refused states, and a refused load leaves --save-state's file alone
"$BDH" chat -m "$TINY" --save-state "$TMP/tiny-state.bin" </dev/null >/dev/null 2>&1
check "chat with no turns still writes --save-state (a zero state)" test -s "$TMP/tiny-state.bin"
cp "$TMP/st.bin" "$TMP/keep.bin"
expect_error 1 "cannot resume from '$TMP/tiny-state.bin': .*(BDH_ERR_MODEL_MISMATCH)" \
    "$BDH" chat -m "$SHAKE" --load-state "$TMP/tiny-state.bin" --save-state "$TMP/keep.bin"
check "a refused --load-state leaves --save-state's file as it was" cmp -s "$TMP/st.bin" "$TMP/keep.bin"
head -c 100 "$TMP/st.bin" >"$TMP/cut-state.bin"
expect_error 1 "cannot resume from '$TMP/cut-state.bin': .*(BDH_ERR_FORMAT)" "$BDH" chat -m "$SHAKE" --load-state "$TMP/cut-state.bin"
expect_error 1 "cannot create a file beside '$TMP/no/such/dir/s.bin'" "$BDH" chat -m "$TINY" --save-state "$TMP/no/such/dir/s.bin"

# --- chat on a terminal (a pseudo-terminal from script(1)): the hint and the
# "> " prompt on standard error; from a pipe, nothing there
"$BDH" chat -m "$SHAKE" $G <"$TMP/l1" >/dev/null 2>"$TMP/err"
check "chat from a pipe writes nothing on standard error" test ! -s "$TMP/err"
if command -v script >/dev/null && script -qec true /dev/null </dev/null >/dev/null 2>&1; then
    (cat "$TMP/l1"; sleep 1) | timeout 60 script -qec "'$BDH' chat -m '$SHAKE' $G" /dev/null >"$TMP/tty.txt" 2>&1
    check "chat on a terminal says how to use it" grep -q "^bdh: chat: type a line and Enter; Ctrl-D ends" "$TMP/tty.txt"
    # (where the terminal echoes the typed line depends on timing: each part on its own)
    check "chat on a terminal prompts with '> '" grep -q "^> " "$TMP/tty.txt"
    check "chat on a terminal streams the reply" grep -qF "$(head -n 1 "$TMP/r1")" "$TMP/tty.txt"
else
    echo "cli: chat on a terminal not checked: no script(1)"
fi

# --- every long option and its short form do the same
expect_ok "$BDH" generate --model "$TINY" --prompt hello --max-tokens 60 --temperature 0
check "generate --model --prompt --max-tokens = -m -p -n" cmp -s "$TMP/out" "$TMP/greedy60"
expect_ok "$BDH" generate --model "$TINY" --file "$TMP/prompt.txt" --max-tokens 60 --temperature 0
check "generate --file = -f" cmp -s "$TMP/out" "$TMP/greedy60"
"$BDH" generate -m "$TINY" -p hello -n 5 --verbose >/dev/null 2>"$TMP/err" </dev/null
check "generate --verbose = -v" grep -q "^seed: " "$TMP/err"
for cmd in generate info perplexity quantize trace chat; do
    expect_ok "$BDH" $cmd -h
    check "bdh $cmd -h = --help" grep -q "^Usage: bdh $cmd" "$TMP/out"
done
expect_ok "$BDH" -h
check "bdh -h = --help" grep -q "^Usage: bdh" "$TMP/out"
expect_ok "$BDH" -V
check "bdh -V = --version" grep -Eq '^bdh [0-9]+\.[0-9]+\.[0-9]+$' "$TMP/out"
expect_ok "$BDH" perplexity --model "$TINY" --file "$TMP/w1.txt"
check "perplexity --model --file = -m -f" grep -q "^bits per byte: $one " "$TMP/out"
expect_ok "$BDH" trace --model "$LONG" --file "$TMP/text.txt" --output "$TMP/long.st" --threads 1
check "trace --model --file --output = -m -f -o" cmp -s "$TMP/long.st" "$TMP/plain.st"
expect_ok "$BDH" trace --model "$LONG" --prompt "$(cat "$TMP/cut.txt")" --output "$TMP/longp.st" --threads 1
check "trace --prompt = -p" cmp -s "$TMP/longp.st" "$TMP/cut.st"
"$BDH" chat --model "$SHAKE" --temperature 0 --max-tokens 120 --verbose <"$TMP/l1" >"$TMP/out" 2>"$TMP/err"
check "chat --model --max-tokens = -m -n" cmp -s "$TMP/out" "$TMP/r1"
check "chat --verbose = -v" grep -q "^turn 1: 7 bytes fed" "$TMP/err"

# --- the README's `make run` sample is what the tool prints
prompt=$(sed -n 's/^RUN_PROMPT ?= //p' Makefile)
run_cmd=$(sed -n 's/^\t@$(BUILD)\/bdh \(generate .*\)$/\1/p' Makefile)
run_cmd=${run_cmd//\$(RUN_PROMPT)/$prompt}
check "the Makefile's run target is the command the README names (${run_cmd/ -m models\/shakespeare.safetensors/})" \
    grep -qF "(\`bdh ${run_cmd/ -m models\/shakespeare.safetensors/}\`)" README.md
awk '/^`make run` prints/ { on = 1; next } on && /^```$/ { if (++fence == 2) exit; next } on && fence == 1' README.md >"$TMP/readme_run"
eval "\"\$BDH\" $run_cmd" >"$TMP/out" 2>/dev/null </dev/null && echo >>"$TMP/out"
check "README's make run sample is exactly what the tool prints" cmp -s "$TMP/out" "$TMP/readme_run"
# --- merge (docs/merging.md)
expect_ok "$BDH" merge --help
check "bdh merge --help prints usage" grep -q "^Usage: bdh merge" "$TMP/out"
check "bdh merge --help names --embed-from" grep -q -- "--embed-from W" "$TMP/out"
expect_ok "$BDH" --help
check "bdh --help lists merge" grep -q "^  merge " "$TMP/out"
expect_error 2 "merge needs two model files, A and B" "$BDH" merge -o "$TMP/m.st"
expect_error 2 "merge needs two model files, A and B" "$BDH" merge "$TINY" -o "$TMP/m.st"
expect_error 2 "merge needs two model files, A and B" "$BDH" merge "$TINY" "$TINY" "$TINY" -o "$TMP/m.st"
expect_error 2 "merge needs -o OUT, the file to write" "$BDH" merge "$TINY" "$TINY"
expect_error 2 "--embed-from needs mean, a or b, not 'c'" "$BDH" merge --embed-from c "$TINY" "$TINY" -o "$TMP/m.st"
expect_error 2 "unknown or ambiguous option '--bogus'" "$BDH" merge --bogus "$TINY" "$TINY" -o "$TMP/m.st"
expect_error 2 "needs a value" "$BDH" merge "$TINY" "$TINY" -o
expect_error 1 "cannot merge: n_layer is 2 in '$TINY' but 6 in '$LONG': a merge needs the same n_layer, n_embd, n_head and vocab_size (BDH_ERR_CONFIG)" \
    "$BDH" merge "$TINY" "$LONG" -o "$TMP/m.st"
expect_error 1 "cannot merge: n_layer is 2 in '$TINY' but 3 in '$ODD'" "$BDH" merge "$TINY" "$ODD" -o "$TMP/m.st"
expect_error 1 "cannot merge: cannot open '$TMP/missing.safetensors'" "$BDH" merge "$TINY" "$TMP/missing.safetensors" -o "$TMP/m.st"
expect_error 1 "cannot merge: .*'$TMP/junk.safetensors'.*is not a safetensors file" "$BDH" merge "$TMP/junk.safetensors" "$TINY" -o "$TMP/m.st"
cp "$TINY" "$TMP/tiny-copy.st"
expect_error 1 "the output '$TMP/tiny-copy.st' is an input (BDH_ERR_INVALID_ARGUMENT)" "$BDH" merge "$TINY" "$TMP/tiny-copy.st" -o "$TMP/tiny-copy.st"
ln -sf "$TMP/tiny-copy.st" "$TMP/tiny-copy-link.st"
expect_error 1 "is an input" "$BDH" merge "$TMP/tiny-copy.st" "$TINY" -o "$TMP/tiny-copy-link.st"
check "merge onto an input leaves the input as it was" cmp -s "$TINY" "$TMP/tiny-copy.st"
echo keep >"$TMP/merge-kept.st"
expect_error 1 "cannot merge" "$BDH" merge "$TINY" "$LONG" -o "$TMP/merge-kept.st"
check "a failed merge leaves an existing OUT as it was" test "$(cat "$TMP/merge-kept.st")" = keep
check "a failed merge writes no file" test ! -e "$TMP/m.st"
expect_ok "$BDH" merge "$TINY" "$TINY" -o "$TMP/self.st"
check "merge reports what it wrote" grep -Eq "^wrote $TMP/self.st: 2 layers, n_embd 32, 2 heads of 256 neurons, embed and lm_head averaged; 0.25 MiB$" "$TMP/out"
check "merge leaves no temporary file" test "$(ls "$TMP" | grep -c tmp-)" -eq 0
expect_ok "$BDH" info "$TMP/self.st"
check "info of a merge: the neurons of both, the multipliers summed" grep -q "^n_neurons: *256 (per head; mlp_internal_dim_multiplier 16)$" "$TMP/out"
check "info of a merge: F32 tensors" grep -q "^dtypes: *embed.weight=F32 encoder=F32 encoder_v=F32 decoder=F32 lm_head=F32 attn.freqs=F32$" "$TMP/out"
expect_ok "$BDH" merge --embed-from mean "$TINY" "$TINY" -o "$TMP/self-mean.st"
check "--embed-from mean is the default" cmp -s "$TMP/self.st" "$TMP/self-mean.st"
expect_ok "$BDH" merge "$TMP/self.st" "$TINY" -o "$TMP/three.st"
check "a merge merges again (256 + 128 neurons)" grep -q "heads of 384 neurons" "$TMP/out"
expect_ok "$BDH" merge -o "$TMP/three-a.st" --embed-from a "$TMP/self.st" "$TINY"
check "--embed-from a says so" grep -q "embed and lm_head from A" "$TMP/out"
expect_ok "$BDH" merge --output "$TMP/three-b.st" --embed-from b "$TMP/self.st" "$TINY"
check "--embed-from b says so" grep -q "embed and lm_head from B" "$TMP/out"
expect_ok "$BDH" quantize "$TINY" "$TMP/tiny.q8.merge.st"
expect_ok "$BDH" merge "$TMP/tiny.q8.merge.st" "$TINY" -o "$TMP/q8-merge.st"
check "a Q8_0 input merges into an F32 file" grep -q "heads of 256 neurons" "$TMP/out"
expect_ok "$BDH" merge tests/data/golden/bf16.model.safetensors tests/data/golden/compiled.model.safetensors -o "$TMP/bf16-compiled.st"
check "BF16 and _orig_mod. inputs merge" grep -q "heads of 256 neurons" "$TMP/out"
expect_ok "$BDH" generate -m "$TMP/three.st" -p hello -n 20 --temperature 0
check "a merged model generates 20 bytes" test "$(size "$TMP/out")" -eq 20

# --- convert (docs/cli.md): any checkpoint layout to the canonical file
CK=tests/data/checkpoints
expect_ok "$BDH" convert --help
check "bdh convert --help prints usage" grep -q "^Usage: bdh convert" "$TMP/out"
expect_ok "$BDH" --help
check "bdh --help lists convert" grep -q "^  convert " "$TMP/out"
expect_error 2 "convert needs two arguments, IN and OUT" "$BDH" convert "$TINY"
expect_error 2 "--type needs f32, bf16, f16, q8_0 or stored, not 'int4'" "$BDH" convert --type int4 "$TINY" "$TMP/c.st"
expect_error 2 "unknown or ambiguous option '--bogus'" "$BDH" convert --bogus "$TINY" "$TMP/c.st"
expect_error 1 "cannot convert '$TMP/missing.safetensors': cannot open" "$BDH" convert "$TMP/missing.safetensors" "$TMP/c.st"
expect_error 1 "the output '$TINY' is the input (BDH_ERR_INVALID_ARGUMENT)" "$BDH" convert "$TINY" "$TINY"
echo keep >"$TMP/convert-kept.st"
expect_error 1 "cannot convert" "$BDH" convert "$TMP/junk.safetensors" "$TMP/convert-kept.st"
check "a failed convert leaves an existing OUT as it was" test "$(cat "$TMP/convert-kept.st")" = keep
for layout in hf-tied hf-untied ref-no-metadata ref-model-prefix.safetensors ref-backbone-lm-gate.safetensors; do
    expect_ok "$BDH" convert "$CK/$layout" "$TMP/canon.st"
    check "convert $layout reports what it wrote" grep -Eq "^wrote $TMP/canon.st: [0-9.]+ MiB$" "$TMP/out"
    mkdir -p "$TMP/alone" && cp "$TMP/canon.st" "$TMP/alone/canon.st"
    expect_ok "$BDH" generate -m "$CK/$layout" -p hello -n 30 --temperature 0
    cp "$TMP/out" "$TMP/from-layout"
    expect_ok "$BDH" generate -m "$TMP/alone/canon.st" -p hello -n 30 --temperature 0
    check "convert $layout: the canonical copy, alone in its directory, generates the same bytes" cmp -s "$TMP/out" "$TMP/from-layout"
done
expect_ok "$BDH" convert --type bf16 "$CK/hf-tied" "$TMP/canon-bf16.st"
expect_ok "$BDH" info "$TMP/canon-bf16.st"
check "convert --type bf16: BF16 weights, float32 freqs" grep -q "^dtypes: *embed.weight=BF16 encoder=BF16 encoder_v=BF16 decoder=BF16 lm_head=BF16 attn.freqs=F32$" "$TMP/out"
expect_ok "$BDH" convert --type q8_0 "$CK/hf-tied" "$TMP/canon-q8.st"
expect_ok "$BDH" quantize "$CK/hf-tied" "$TMP/quant-q8.st"
check "convert --type q8_0 writes what quantize writes" cmp -s "$TMP/canon-q8.st" "$TMP/quant-q8.st"
expect_ok "$BDH" convert --type f32 "$TMP/canon-q8.st" "$TMP/deq.st"
expect_ok "$BDH" info "$TMP/deq.st"
check "convert --type f32 of a Q8_0 file: float32 again" grep -q "encoder=F32" "$TMP/out"
check "convert leaves no temporary file" test "$(ls "$TMP" | grep -c tmp-)" -eq 0

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
