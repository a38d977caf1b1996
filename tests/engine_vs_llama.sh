#!/bin/sh
# engine_vs_llama.sh - essaim's engine against llama.cpp (issue 3, item 6).
#
#   tests/engine_vs_llama.sh [ESSAIM_BINARY] [--quick]
#
# For every model in ${ESSAIM_TEST_MODELS:-<repo>/../shared/models} and for synthetic models
# of each architecture shape and several types (essaim synth), compares the logits at every
# position of a fixed prompt (F32 KV cache, flash attention off on both sides) with
# tests/ref/ref.mjs: within 1e-3 max abs for F32/F16 models, 1e-2 for quantized ones. On the
# trained stories models it also checks greedy output is identical for 64 tokens, and that a
# fragment directory (essaim fragment, small fragments) gives exactly the .gguf's logits,
# also with ESSAIM_PACK=0 (Q4_K and Q8_0 are packed in memory by default, kept in GGUF
# layout then), and so does the .gguf mapped in place (ESSAIM_MMAP=1): synthetic Q4_K and
# Q8_0 models too.
# Prompt token ids come from llama.cpp, so this tests the engine, not the tokenizer.
# Last line: "engine_vs_llama: N passed, N failed".
#
# KNOWN lists the comparisons that do not agree with llama.cpp yet (issue 3 stays open
# until it is empty). They print "KNOWN" with their figures and count neither as passed
# nor failed; one that starts agreeing prints "XPASS" (counted as passed: take it off the
# list). Never add to the list to make a new failure go away.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/essaim}
QUICK=${2:-}
MODELS=${ESSAIM_TEST_MODELS:-$ROOT/../shared/models}
REF="$ROOT/tests/ref/ref.mjs"
CMP="$ROOT/tests/compare_logits.mjs"
TMP=$(mktemp -d /tmp/engine_vs_llama.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
PROMPT="Once upon a time, there was a little girl named Lily. She loved to play"
pass=0
fail=0

KNOWN="
"
known=0
is_known() { [ -n "$1" ] && printf "%s\n" "$KNOWN" | grep -qxF "$1"; }
# ok KEY MESSAGE / ko KEY MESSAGE: KEY names the comparison ("<model> logits", "<model> greedy")
ok() {
    pass=$((pass + 1))
    if is_known "$1"; then echo "  XPASS $2 (agrees now: take \"$1\" off KNOWN)"; else echo "  ok   $2"; fi
}
ko() {
    if is_known "$1"; then known=$((known + 1)); echo "  KNOWN $2"; else fail=$((fail + 1)); echo "  FAIL $2"; fi
}

if [ ! -x "$BIN" ]; then echo "engine_vs_llama: no essaim binary at $BIN"; echo "engine_vs_llama: 0 passed, 1 failed"; exit 1; fi
if [ ! -d "$ROOT/tests/ref/node_modules" ]; then
    echo "engine_vs_llama: installing the llama.cpp reference (tests/ref/setup.sh)"
    sh "$ROOT/tests/ref/setup.sh" >/dev/null 2>&1 || { echo "engine_vs_llama: reference harness unavailable"; echo "engine_vs_llama: 0 passed, 1 failed"; exit 1; }
fi

# tokens of FILE: the prompt as llama.cpp tokenizes it (BOS included when it adds one)
ref_tokens() { node "$REF" --model "$1" --prompt "$PROMPT" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).tokens.join(",")))'; }

# logits FILE NAME TOL: our logits at every position vs llama.cpp's
logits() {
    f=$1 name=$2 tol=$3
    toks=$(ref_tokens "$f") || { ko "" "$name: llama.cpp could not tokenize"; return; }
    if ! node "$REF" --model "$f" --tokens "$toks" --logits >"$TMP/ref.json" 2>"$TMP/ref.err"; then
        ko "" "$name: llama.cpp failed: $(tail -1 "$TMP/ref.err")"; return
    fi
    if ! "$BIN" run "$f" --tokens "$toks" --dump-logits "$TMP/ours.json" -t 1 2>"$TMP/ours.err"; then
        ko "" "$name: essaim failed: $(tail -1 "$TMP/ours.err")"; return
    fi
    if r=$(node "$CMP" "$TMP/ours.json" "$TMP/ref.json" "$tol"); then ok "$name logits" "$name logits: $r"; else ko "$name logits" "$name logits: $r"; fi
}

# greedy FILE NAME N: the same N greedy tokens as llama.cpp
greedy() {
    f=$1 name=$2 n=$3
    toks=$(ref_tokens "$f")
    want=$(node "$REF" --model "$f" --tokens "$toks" --greedy "$n" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).greedy.join(" ")))')
    got=$("$BIN" run "$f" --tokens "$toks" --temp 0 -n "$n" --ids -t 2 2>"$TMP/ours.err")
    if [ "$got" = "$want" ]; then ok "$name greedy" "$name greedy $n tokens identical"; else ko "$name greedy" "$name greedy: essaim [$got] llama.cpp [$want]"; fi
}

# fragdir FILE NAME: a fragment directory gives exactly the file's logits
fragdir() {
    f=$1 name=$2 dir="$TMP/frag"
    rm -rf "$dir"
    toks=$(ref_tokens "$f")
    if ! "$BIN" fragment "$f" -o "$dir" --max-size 64K >/dev/null 2>"$TMP/frag.err"; then ko "" "$name fragment: $(tail -1 "$TMP/frag.err")"; return; fi
    "$BIN" run "$f" --tokens "$toks" --dump-logits "$TMP/a.json" -t 2 2>/dev/null
    if ! "$BIN" run "$dir" --tokens "$toks" --dump-logits "$TMP/b.json" -t 2 2>"$TMP/b.err"; then ko "" "$name fragment dir: $(tail -1 "$TMP/b.err")"; return; fi
    if cmp -s "$TMP/a.json" "$TMP/b.json"; then ok "" "$name fragment dir ($(ls "$dir" | grep -c esf) fragments) = .gguf, bit for bit"
    else ko "" "$name fragment dir logits differ from the .gguf's"; fi
    # the same directory with its weights in GGUF layout (not packed in memory)
    if ! ESSAIM_PACK=0 "$BIN" run "$dir" --tokens "$toks" --dump-logits "$TMP/c.json" -t 2 2>"$TMP/b.err"; then ko "" "$name fragment dir unpacked: $(tail -1 "$TMP/b.err")"; return; fi
    if cmp -s "$TMP/a.json" "$TMP/c.json"; then ok "" "$name fragment dir unpacked = packed .gguf, bit for bit"
    else ko "" "$name unpacked fragment dir logits differ from the packed .gguf's"; fi
    # the .gguf mapped from the file, used in place (ESSAIM_MMAP=1)
    if ! ESSAIM_MMAP=1 "$BIN" run "$f" --tokens "$toks" --dump-logits "$TMP/c.json" -t 2 2>"$TMP/b.err"; then ko "" "$name mapped: $(tail -1 "$TMP/b.err")"; return; fi
    if cmp -s "$TMP/a.json" "$TMP/c.json"; then ok "" "$name mapped .gguf = packed .gguf, bit for bit"
    else ko "" "$name mapped .gguf logits differ from the packed .gguf's"; fi
}

echo "engine_vs_llama: models in $MODELS"
if [ -d "$MODELS" ]; then
    for f in "$MODELS"/*.gguf; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        case "$name" in
            stories260K.gguf|stories260K-F16.gguf|llama-2-tiny-random.gguf) tol=1e-3 ;;
            *) tol=1e-2 ;;
        esac
        logits "$f" "$name" "$tol"
        case "$name" in stories260K*) greedy "$f" "$name" 64 ;; esac
    done
    for name in stories260K.gguf stories260K-Q4_0.gguf stories260K-Q4_K_M.gguf stories260K-pad256-Q4_K_M.gguf stories260K-moe4x2-Q8_0.gguf; do
        [ -f "$MODELS/$name" ] && fragdir "$MODELS/$name" "$name"
    done
else
    echo "engine_vs_llama: no models folder; synthetic models only"
fi

# Synthetic models: each architecture shape, small, several types.
synth() {
    name=$1 type=$2 tol=$3; shift 3
    out="$TMP/$name-$type.gguf"
    if ! "$BIN" synth -o "$out" --type "$type" "$@" >/dev/null 2>"$TMP/synth.err"; then ko "" "synth $name $type: $(tail -1 "$TMP/synth.err")"; return; fi
    logits "$out" "synth $name $type" "$tol"
    # Q4_K, Q4_0 and Q8_0 are packed in memory (ESSAIM_PACK=0: GGUF layout; ESSAIM_MMAP=1: mapped)
    case $type in Q4_K*|Q8_0|Q4_0) fragdir "$out" "$name" ;; esac  # logits set name to "synth NAME TYPE"
    rm -f "$out"
}
TINY="--preset tinyllama-1.1b --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 512 --vocab-size 512 --ctx 256"
MISTRAL="--preset mistral-small-24b --layers 2 --embd 256 --heads 4 --kv-heads 2 --head-dim 96 --ff 512 --vocab-size 512 --ctx 256"
# qwen2: tinyllama's shape plus q/k/v biases and NEOX rope (issue 3 item 4)
QWEN2="--preset tinyllama-1.1b --arch qwen2 --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 512 --vocab-size 512 --ctx 256"
MIXTRAL="--preset mixtral-mini --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 256 --experts 4 --experts-used 2 --vocab-size 512 --ctx 256"
if "$BIN" synth --help >/dev/null 2>&1; then
    TYPES="F32 F16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q4_K_M"
    [ "$QUICK" = "--quick" ] && TYPES="F16 Q8_0 Q4_K_M"
    for t in $TYPES; do
        case $t in F32|F16) tol=1e-3 ;; *) tol=1e-2 ;; esac
        synth tinyllama "$t" "$tol" $TINY
    done
    for t in F32 Q8_0 Q4_K_M; do
        case $t in F32) tol=1e-3 ;; *) tol=1e-2 ;; esac
        synth mistral-small "$t" "$tol" $MISTRAL
        synth mixtral-mini "$t" "$tol" $MIXTRAL
        synth qwen2 "$t" "$tol" $QWEN2
    done
    # attention.sliding_window 8 under a 54-token prompt: llama.cpp attends to everything
    # for llama and qwen2 whatever the key says, and so does essaim unless --swa
    synth sliding-window F32 1e-3 $TINY --sliding-window 8
    # Llama 3.1+ rope scaling: rope_freqs.weight divides each frequency (llama.cpp's freq_factors)
    synth rope-freqs F32 1e-3 $TINY --rope-freqs
    synth rope-freqs Q4_K_M 1e-2 $TINY --rope-freqs
    # essaim bench (issue 3 item 8): both sides' figures and ratios, and the weights'
    # layout; speed is reported, never asserted
    if "$BIN" synth -o "$TMP/bench.gguf" --type Q4_K_M $TINY >/dev/null 2>&1 &&
        "$BIN" bench "$TMP/bench.gguf" -t 1 -p 16 -n 8 >"$TMP/bench.out" 2>&1 &&
        ESSAIM_PACK=0 "$BIN" bench "$TMP/bench.gguf" -t 1 -p 16 -n 8 --no-ref >"$TMP/bench0.out" 2>&1 &&
        grep -qE '^essaim +prefill +16 tokens: +[0-9.]+ tok/s +decode +8 tokens: +[0-9.]+ tok/s' "$TMP/bench.out" &&
        grep -qE '^llama.cpp prefill +16 tokens: +[0-9.]+ tok/s' "$TMP/bench.out" &&
        grep -qE '^ratio +prefill [0-9.]+x +decode [0-9.]+x' "$TMP/bench.out" &&
        grep -qE '^weights +in memory, [1-9][0-9]* tensor slices packed' "$TMP/bench.out" &&
        grep -qE '^weights +in memory, 0 tensor slices packed' "$TMP/bench0.out" &&
        grep -qE '^llama.cpp \(not run: --no-ref\)' "$TMP/bench0.out"; then
        ok "" "bench: $(grep -E '^ratio' "$TMP/bench.out")"
    else
        ko "" "bench output: $(cat "$TMP/bench.out" "$TMP/bench0.out" 2>/dev/null | tr '\n' '|')"
    fi
else
    echo "engine_vs_llama: essaim synth unavailable; synthetic models skipped"
fi

[ "$known" -gt 0 ] && echo "engine_vs_llama: $known known divergences from llama.cpp (see KNOWN in this script)"
echo "engine_vs_llama: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
