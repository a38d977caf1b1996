#!/bin/sh
# cli_fragment.sh ESSAIM [TMPDIR] - drives `essaim fragment | verify | recombine` end to end.
#
# For every test model (${ESSAIM_TEST_MODELS:-<repo>/../shared/models}/*.gguf and vocab/*.gguf)
# and a few synthetic models written by `essaim synth`, at --max-size 10M and 64K:
# fragment, verify, recombine, and compare the rebuilt file with the original byte for
# byte. Then corrupts one fragment and deletes another, and checks that verify names both
# and exits non-zero and that recombine refuses. Last line: "cli_fragment: N passed, N failed".
set -u
ESSAIM=${1:?usage: cli_fragment.sh ESSAIM [TMPDIR]}
here=$(cd "$(dirname "$0")" && pwd)
MODELS=${ESSAIM_TEST_MODELS:-$here/../../shared/models}
if [ $# -ge 2 ]; then tmp=$2; mkdir -p "$tmp"; else tmp=$(mktemp -d "${TMPDIR:-/tmp}/cli_fragment-XXXXXX"); fi
cleanup() { [ -n "${ESS_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; [ -f "$tmp/log" ] && sed 's/^/    /' "$tmp/log" | tail -5; }

# One model at one size: fragment, verify, recombine, compare.
roundtrip() { # FILE SIZE NAME
    d="$tmp/frags"
    rm -rf "$d" "$tmp/out.gguf"
    if ! "$ESSAIM" fragment "$1" -o "$d" --max-size "$2" >"$tmp/log" 2>&1; then fail "$3 $2: fragment"; return; fi
    frags=$(sed -n 's/^fragments *\([0-9]*\).*/\1/p' "$tmp/log")
    if ! "$ESSAIM" verify "$d" >"$tmp/log" 2>&1; then fail "$3 $2: verify"; return; fi
    if ! "$ESSAIM" recombine "$d" -o "$tmp/out.gguf" >"$tmp/log" 2>&1; then fail "$3 $2: recombine"; return; fi
    if ! cmp -s "$1" "$tmp/out.gguf"; then fail "$3 $2: rebuilt file differs"; return; fi
    a=$(sha256sum <"$1" | cut -d' ' -f1)
    b=$(sha256sum <"$tmp/out.gguf" | cut -d' ' -f1)
    if [ "$a" != "$b" ] || [ "$(sed -n 's/.*"model_id": "\([0-9a-f]*\)".*/\1/p' "$d/manifest.json")" != "$a" ]; then
        fail "$3 $2: sha256 / model id"; return
    fi
    ok "$3 $2 ($frags fragments)"
}

set --
if [ -d "$MODELS" ]; then
    for f in "$MODELS"/*.gguf "$MODELS"/vocab/*.gguf; do [ -f "$f" ] && set -- "$@" "$f"; done
else
    echo "(no test models in $MODELS: synthetic models only)"
fi

# Synthetic models: a dense K-quant mix, an MoE, F16 with head_dim != n_embd/heads and a
# tied LM head (these shapes give tensors whose sizes are not multiples of 32, so gaps).
mk() { # NAME ARGS...
    n=$1; shift
    if "$ESSAIM" synth -o "$tmp/$n.gguf" "$@" >"$tmp/log" 2>&1; then set_synth="$set_synth $tmp/$n.gguf"; else fail "synth $n"; fi
}
set_synth=""
mk synth-q4km --type Q4_K_M --layers 2 --embd 256 --heads 4 --kv-heads 2 --ff 512 --vocab-size 1000
mk synth-moe-q4_0 --type Q4_0 --layers 2 --embd 128 --heads 4 --kv-heads 2 --ff 256 --vocab-size 600 --experts 4 --experts-used 2
mk synth-f16-tied --type F16 --layers 1 --embd 96 --heads 3 --kv-heads 1 --head-dim 40 --ff 200 --vocab-size 300 --tied
mk synth-q8_0-big --type Q8_0 --layers 2 --embd 512 --heads 8 --kv-heads 4 --ff 1536 --vocab-size 4000

for f in "$@" $set_synth; do
    for s in 10M 64K; do roundtrip "$f" "$s" "$(basename "$f")"; done
done

# Damage: flip a byte in one fragment, delete another; verify must name both and fail.
flip() { # FILE OFFSET
    b=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
    printf "$(printf '\\%03o' $((b ^ 255)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
src=$(echo $set_synth | tr ' ' '\n' | grep q8_0-big)
[ -n "$src" ] || src=${1:-}
if [ -n "$src" ]; then
    d="$tmp/damaged"
    rm -rf "$d"
    "$ESSAIM" fragment "$src" -o "$d" --max-size 64K >"$tmp/log" 2>&1
    set -- $(ls "$d" | grep '\.esf$' | sort | head -n 2)
    if [ $# -lt 2 ]; then
        fail "damage: fewer than 2 fragments"
    else
        bad=${1%.esf}
        gone=${2%.esf}
        size=$(wc -c <"$d/$1")
        flip "$d/$1" $((size / 2))
        rm -f "$d/$2"
        "$ESSAIM" verify "$d" >"$tmp/log" 2>&1
        rc=$?
        if [ $rc -ne 0 ] && grep -q "$bad.*corrupt" "$tmp/log" && grep -q "$gone.*missing" "$tmp/log" &&
            grep -q "1 missing, 1 corrupt" "$tmp/log"; then
            ok "verify names the corrupt and the missing fragment (exit $rc)"
        else
            fail "verify on a damaged directory (exit $rc)"
        fi
        if "$ESSAIM" recombine "$d" -o "$tmp/bad.gguf" >"$tmp/log" 2>&1 || [ -e "$tmp/bad.gguf" ] || [ -e "$tmp/bad.gguf.part" ]; then
            fail "recombine on a damaged directory must fail and leave nothing"
        else
            ok "recombine refuses a damaged directory"
        fi
        # A fragment header that lies (same size, re-hashed name) is caught by the header check.
        rm -rf "$d" && "$ESSAIM" fragment "$src" -o "$d" --max-size 64K >/dev/null 2>&1
        f=$(ls "$d" | grep '\.esf$' | sort | head -n 1)
        flip "$d/$f" 13 # fragment index, byte 1
        new=$(sha256sum <"$d/$f" | cut -d' ' -f1)
        sed -i "s/${f%.esf}/$new/" "$d/manifest.json"
        mv "$d/$f" "$d/$new.esf"
        "$ESSAIM" verify "$d" >"$tmp/log" 2>&1
        rc=$?
        if [ $rc -ne 0 ] && grep -q "$new.*disagrees with the manifest" "$tmp/log"; then
            ok "verify catches a header that disagrees with the manifest"
        else
            fail "verify on a lying header (exit $rc)"
        fi
    fi
fi

rm -f "$tmp/log"
echo "cli_fragment: $passed passed, $failed failed"
[ $failed -eq 0 ]
