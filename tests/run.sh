#!/bin/sh
# run.sh [FILTER] - the whole essaim test suite: sets up what is missing (native/setup.sh
# --tests), then runs every unit test binary in the normal and the ASan+UBSan build, the
# script tests (tests/*.sh) against build/essaim, the JS tests (node --test tests/js), the
# relay's and the API's JS tests again against the ASan build, and each fuzzer briefly over
# its corpus. Prints one line per suite and a last line
# "N passed, N failed"; exits non-zero if anything failed.
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
filter=${1:-}

./native/setup.sh --tests || { echo "run.sh: setup failed"; echo "0 passed, 1 failed"; exit 1; }

export ESSAIM_TEST_MODELS="${ESSAIM_TEST_MODELS:-$root/../shared/models}"
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
P=0; F=0
tally() { # tally NAME LOGFILE STATUS: counts from the last "N passed, N failed" line
  line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$2" | tail -n 1)
  p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
  f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
  p=${p:-0}; f=${f:-0}
  if [ -z "$line" ] || { [ "$3" != 0 ] && [ "$f" = 0 ]; }; then f=$((f + 1)); fi
  P=$((P + p)); F=$((F + f))
  if [ "$f" != 0 ]; then echo "FAIL $1: $p passed, $f failed"; tail -n 30 "$2" | sed 's/^/    /'
  else echo "ok   $1: $p passed"; fi
}
want() { [ -z "$filter" ] || case "$1" in *"$filter"*) return 0 ;; *) return 1 ;; esac; }

for b in build build-asan; do
  for t in "$b"/test_*; do
    [ -x "$t" ] || continue
    name="$b/$(basename "$t")"; want "$name" || continue
    ASAN_OPTIONS=detect_leaks=1 "$t" >"$log/out" 2>&1; tally "$name" "$log/out" $?
  done
done

for s in tests/*.sh; do
  [ "$s" = tests/run.sh ] && continue
  want "$s" || continue
  sh "$s" "$root/build/essaim" >"$log/out" 2>&1; tally "$s" "$log/out" $?
done

if want js; then
  node --test --test-reporter=tap tests/js/ >"$log/js" 2>&1; st=$?
  jp=$(grep -E '^# pass ' "$log/js" | grep -oE '[0-9]+' || echo 0)
  jf=$(grep -E '^# fail ' "$log/js" | grep -oE '[0-9]+' || echo 0)
  echo "js: ${jp:-0} passed, ${jf:-0} failed" >>"$log/js"
  tally "node --test tests/js" "$log/js" $st
fi

# The servers under ASan+UBSan: the relay against every abuse case, and the HTTP API
if want asan-js && [ -x build-asan/essaim-relay ] && [ -x build-asan/essaim ]; then
  ESSAIM_BUILD="$root/build-asan" ASAN_OPTIONS=detect_leaks=1 node --test --test-reporter=tap tests/js/relay_ws.test.mjs \
    tests/js/api.test.mjs >"$log/asanjs" 2>&1; st=$?
  jp=$(grep -E '^# pass ' "$log/asanjs" | grep -oE '[0-9]+' || echo 0)
  jf=$(grep -E '^# fail ' "$log/asanjs" | grep -oE '[0-9]+' || echo 0)
  echo "asan js: ${jp:-0} passed, ${jf:-0} failed" >>"$log/asanjs"
  tally "node --test relay_ws + api (ASan build)" "$log/asanjs" $st
fi

for fz in build-fuzz/fuzz_*; do
  [ -x "$fz" ] || continue
  name=$(basename "$fz"); want "$name" || continue
  corpus="tests/fuzz/corpus/${name#fuzz_}"
  work="$log/$name"; mkdir -p "$work"; [ -d "$corpus" ] && cp -r "$corpus/." "$work/"
  "$fz" -max_total_time="${ESSAIM_FUZZ_SECONDS:-20}" -print_final_stats=0 "$work" >"$log/out" 2>&1; st=$?
  if [ $st = 0 ]; then echo "$name: 1 passed, 0 failed" >>"$log/out"; else echo "$name: 0 passed, 1 failed" >>"$log/out"; fi
  tally "$name" "$log/out" $st
done

echo "$P passed, $F failed"
[ "$F" = 0 ]
