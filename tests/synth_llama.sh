#!/bin/sh
# synth_llama.sh ESSAIM - integration test of `essaim synth` against llama.cpp.
#
# Synthesizes small models in the shapes of every preset (reduced by explicit flags: a
# tinyllama-shaped dense model in every --type, a mistral-small-shaped one whose
# heads * head_dim != n_embd, a mixtral-mini-shaped MoE, a mistral-7b-shaped one, rows too
# short for K-quants, a tied LM head, a copied vocabulary) and checks that llama.cpp
# (tests/ref/ref.mjs) loads each, gives finite, non-constant logits of n_vocab values at
# every prompt position, and a greedy continuation of valid ids. Also checks that the CLI
# is deterministic (same seed -> same file, whatever --threads) and refuses bad input.
# Installs the reference harness (tests/ref/setup.sh) when missing.
# Prints "synth_llama: N passed, N failed"; exits non-zero on any failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
ESSAIM=${1:-$here/../build/essaim}
MODELS=${ESSAIM_TEST_MODELS:-$here/../../shared/models}
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
ko() { fail=$((fail + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && sed 's/^/    /' "$2" | tail -n 15; }
finish() { echo "synth_llama: $pass passed, $fail failed"; [ "$fail" = 0 ]; exit $?; }

if [ ! -x "$ESSAIM" ]; then echo "synth_llama: no essaim binary at $ESSAIM"; fail=1; finish; fi
if ! sh "$here/ref/setup.sh" >/dev/null 2>&1; then
  echo "synth_llama: tests/ref/setup.sh failed (npm offline?)"; fail=1; finish
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The harness itself: it must reproduce what ../shared/models/README.md records for
# stories260K.gguf (llama.cpp's prompt tokens, logits at position 0, greedy ids, top two).
if [ -f "$MODELS/stories260K.gguf" ]; then
  if node "$here/ref/ref.mjs" --model "$MODELS/stories260K.gguf" --prompt "Once upon a time" --logits --greedy 32 \
       >"$tmp/ref.json" 2>"$tmp/log" && node - "$tmp/ref.json" >"$tmp/log" 2>&1 <<'EOF'
const o = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
const bad = m => { console.log(m); process.exit(1); };
const want = "432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 282 295 433 426 385 328 432 358 394";
if (o.tokens.join(",") !== "1,403,407,261,378") bad(`tokens ${o.tokens}`);
if (o.greedy.join(" ") !== want) bad(`greedy ${o.greedy.join(" ")}`);
const l0 = o.logits[0], near = (a, b) => Math.abs(a - b) <= 1e-4;
if (!near(l0[0], -6.222915) || !near(l0[1], 8.404343) || !near(l0[2], -6.223740) || !near(l0[3], -6.222545)) bad(`logits[0] ${l0.slice(0, 4)}`);
const last = o.logits[4], top = [...last.keys()].sort((a, b) => last[b] - last[a]);
if (top[0] !== 432 || top[1] !== 383 || !near(last[432], 17.79940) || !near(last[383], 14.28126)) bad(`top ${top.slice(0, 2)}`);
if (!o.text.startsWith(", there was a little girl named Lily.")) bad(`text ${o.text}`);
console.log("tokens, logits, greedy ids and text as README.md records");
EOF
  then ok "ref.mjs on stories260K.gguf: $(cat "$tmp/log")"; else ko "ref.mjs on stories260K.gguf" "$tmp/log"; fi
else
  echo "skip ref.mjs self-check (no $MODELS/stories260K.gguf)"
fi

# check NAME NVOCAB [synth args...]: synthesize, then run llama.cpp on it.
check() {
  name=$1; nv=$2; shift 2
  f="$tmp/$name.gguf"
  if ! "$ESSAIM" synth -o "$f" "$@" >"$tmp/log" 2>&1; then ko "$name (synth)" "$tmp/log"; return; fi
  if ! node "$here/ref/ref.mjs" --model "$f" --prompt "Once upon a time, in 1999" --logits --greedy 8 \
       >"$tmp/out.json" 2>"$tmp/log"; then ko "$name (llama.cpp)" "$tmp/log"; return; fi
  if node - "$tmp/out.json" "$nv" >"$tmp/log" 2>&1 <<'EOF'
const fs = require("fs");
const o = JSON.parse(fs.readFileSync(process.argv[2], "utf8")), nv = Number(process.argv[3]);
const bad = m => { console.log(m); process.exit(1); };
if (o.tokens[0] !== 1) bad(`no BOS: ${o.tokens}`);
if (o.tokens.length < 4 || o.tokens.some(t => !(t >= 0 && t < nv))) bad(`bad prompt tokens ${o.tokens}`);
if (o.logits.length !== o.tokens.length) bad(`${o.logits.length} logit rows for ${o.tokens.length} tokens`);
for (const [i, row] of o.logits.entries()) {
  if (row.length !== nv) bad(`position ${i}: ${row.length} logits, want ${nv}`);
  if (!row.every(v => typeof v === "number" && Number.isFinite(v))) bad(`position ${i}: non-finite logits`);
  const mean = row.reduce((a, b) => a + b, 0) / nv, sd = Math.sqrt(row.reduce((a, b) => a + (b - mean) ** 2, 0) / nv);
  if (!(sd > 0.1 && sd < 100)) bad(`position ${i}: logit spread ${sd}`);
}
if (o.greedy.length !== 8 || o.greedy.some(t => !(Number.isInteger(t) && t >= 0 && t < nv))) bad(`bad greedy ${o.greedy}`);
console.log(`tokens ${o.tokens.length}, greedy ${o.greedy.join(" ")}`);
EOF
  then ok "$name: $(cat "$tmp/log")"; else ko "$name" "$tmp/log"; fi
}

TINY_SHAPE="--preset tinyllama-1.1b --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 512 --ctx 256"
TINY="$TINY_SHAPE --vocab-size 1000"
for t in F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K Q4_K_M; do
  check "tinyllama-shaped-$t" 1000 $TINY --type $t --seed 11
done
# 3 layers, GQA 4, rope base 1e6
check mistral7b-shaped-Q4_K_M 1000 --preset mistral-7b --layers 3 --embd 256 --heads 8 --kv-heads 2 --ff 768 \
  --vocab-size 1000 --ctx 512 --type Q4_K_M
# heads * head_dim = 512 != n_embd 256 (llama.attention.key_length), rope base 1e8
for t in Q4_K_M Q8_0; do
  check "mistral-small-shaped-$t" 1000 --preset mistral-small-24b --layers 2 --embd 256 --heads 4 --kv-heads 2 \
    --head-dim 128 --ff 512 --vocab-size 1000 --ctx 512 --type $t
done
# 8 experts, 2 used (the 8-expert Q4_K_M rules: attn_k/v Q8_0, attn_output Q5_K)
for t in Q4_K_M Q4_0 F16; do
  check "mixtral-mini-shaped-$t" 1000 --preset mixtral-mini --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 256 \
    --vocab-size 1000 --ctx 512 --type $t
done
check moe-4x1-Q8_0 600 --layers 2 --embd 256 --heads 4 --ff 256 --experts 4 --experts-used 1 --vocab-size 600 --type Q8_0
# rows of 64 and 172: K-quants fall back to Q5_0/Q8_0/F16 as llama.cpp does
check stories-shaped-Q4_K_M 512 --layers 5 --embd 64 --heads 8 --kv-heads 4 --ff 172 --vocab-size 512 --type Q4_K_M
check stories-shaped-Q3_K 512 --layers 5 --embd 64 --heads 8 --kv-heads 4 --ff 172 --vocab-size 512 --type Q3_K
check tied-Q4_K_M 1000 $TINY --tied --type Q4_K_M
if [ -f "$MODELS/vocab/ggml-vocab-llama-spm.gguf" ]; then
  check llama-spm-vocab-Q4_K_M 32000 $TINY_SHAPE --vocab "$MODELS/vocab/ggml-vocab-llama-spm.gguf" --type Q4_K_M
else
  echo "skip llama-spm-vocab (no $MODELS/vocab/ggml-vocab-llama-spm.gguf)"
fi

# Determinism through the CLI: same seed -> same bytes with 1 or 2 threads; other seed differs.
"$ESSAIM" synth -o "$tmp/d1.gguf" $TINY --type Q4_K_M --seed 5 >/dev/null 2>&1
"$ESSAIM" synth -o "$tmp/d2.gguf" $TINY --type Q4_K_M --seed 5 --threads 2 >/dev/null 2>&1
"$ESSAIM" synth -o "$tmp/d3.gguf" $TINY --type Q4_K_M --seed 6 >/dev/null 2>&1
if [ -s "$tmp/d1.gguf" ] && cmp -s "$tmp/d1.gguf" "$tmp/d2.gguf"; then ok "same seed, 1 or 2 threads: same bytes"
else ko "same seed, 1 or 2 threads: same bytes"; fi
if [ -s "$tmp/d3.gguf" ] && ! cmp -s "$tmp/d1.gguf" "$tmp/d3.gguf"; then ok "other seed: other bytes"
else ko "other seed: other bytes"; fi

# Refusals: clear message, non-zero exit, no file left behind.
refuse() {
  name=$1; want=$2; shift 2
  if "$ESSAIM" synth -o "$tmp/bad.gguf" "$@" >"$tmp/log" 2>&1; then ko "$name (accepted)" "$tmp/log"
  elif ! grep -q -- "$want" "$tmp/log"; then ko "$name (message lacks '$want')" "$tmp/log"
  elif [ -e "$tmp/bad.gguf" ] || [ -e "$tmp/bad.gguf.tmp" ]; then ko "$name (left a file)"
  else ok "$name: $(head -n 1 "$tmp/log")"; fi
}
refuse "unknown preset" "unknown preset" --preset llama-9000 --type Q8_0
refuse "unknown type" "IQ4_XS" $TINY --type IQ4_XS
refuse "kv heads not dividing heads" "n_head_kv" $TINY --kv-heads 3 --type Q8_0
refuse "tiny built-in vocabulary" "259" $TINY --vocab-size 100 --type Q8_0
refuse "experts used > experts" "n_expert_used" $TINY --experts 4 --experts-used 5 --type Q8_0
refuse "other architecture" "one of llama, qwen2" $TINY --arch gemma --type Q8_0
refuse "qwen2 with experts" "qwen2moe" $TINY --arch qwen2 --experts 4 --type Q8_0
if [ -f "$MODELS/vocab/ggml-vocab-llama-spm.gguf" ]; then
  refuse "vocab size against --vocab" "disagrees" $TINY --vocab "$MODELS/vocab/ggml-vocab-llama-spm.gguf" --type Q8_0
fi

finish
