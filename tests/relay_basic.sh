#!/bin/sh
# relay_basic.sh - essaim-relay over plain HTTP on loopback: a store made by `essaim
# fragment` (stories260K, or a synthetic model when the test models are absent), then curl
# checks of /api/stats, /metrics, /api/models, the manifest, /fragments/<sha256> whole and
# with ranges (206, bytes equal; 416; 404), the web folder, and that a restart keeps the
# counters from the database.
#   sh tests/relay_basic.sh            (ESSAIM_BUILD=build-dir to use another build)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${ESSAIM_BUILD:-$ROOT/build}
RELAY=$BUILD/essaim-relay
ESSAIM=$BUILD/essaim
MODELS=${ESSAIM_TEST_MODELS:-$ROOT/../shared/models}
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

if [ ! -x "$RELAY" ] || [ ! -x "$ESSAIM" ]; then
    echo "relay_basic: $RELAY or $ESSAIM missing (build first)"
    exit 1
fi
T=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT INT TERM

if [ -f "$MODELS/stories260K.gguf" ]; then
    GGUF=$MODELS/stories260K.gguf
else
    GGUF=$T/synth.gguf
    "$ESSAIM" synth -o "$GGUF" --type Q8_0 --preset tinyllama-1.1b --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 512 \
        --vocab-size 512 >"$T/synth.log" 2>&1 || { echo "relay_basic: essaim synth failed: $(tail -1 "$T/synth.log")"; exit 1; }
fi
"$ESSAIM" fragment "$GGUF" -o "$T/frags" --max-size 64K >/dev/null 2>&1 || { echo "relay_basic: fragment failed"; exit 1; }
mkdir -p "$T/store" "$T/web/app"
echo '<!doctype html><title>essaim</title>' > "$T/web/index.html"
echo 'console.log(1)' > "$T/web/app/main.js"
check "add-model checks and copies the fragments" '"$RELAY" --store "$T/store" --add-model "$T/frags" > "$T/add.out" 2>&1'
MODEL=$(ls "$T/store" | grep -E '^[0-9a-f]{64}$' | head -1)
NFRAG=$(ls "$T/frags"/*.esf | wc -l)

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {
    "$RELAY" --listen 127.0.0.1:$PORT --store "$T/store" --web "$T/web" > "$T/relay.out" 2>> "$T/relay.err" &
    PID=$!
    for _ in $(seq 50); do grep -q listening "$T/relay.out" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null; PID=; }
URL=http://127.0.0.1:$PORT
check "relay starts" start

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
STATS=$(curl -sf "$URL/api/stats")
check "/api/stats: fragment count" '[ "$(echo "$STATS" | json "d[\"fragments\"][\"total\"]")" = "$NFRAG" ]'
check "/api/stats: model listed" '[ "$(echo "$STATS" | json "d[\"models\"][0][\"id\"]")" = "$MODEL" ]'
check "/api/stats: all lost without nodes" '[ "$(echo "$STATS" | json "d[\"fragments\"][\"lost\"]")" = "$NFRAG" ]'
METRICS=$(curl -sf "$URL/metrics")
check "/metrics: fragments gauge" 'echo "$METRICS" | grep -qx "essaim_fragments $NFRAG"'
check "/metrics: TYPE lines" 'echo "$METRICS" | grep -q "^# TYPE essaim_requests_routed_total counter"'
check "/api/models" '[ "$(curl -sf "$URL/api/models" | json "d[\"models\"][0][\"manifest\"]")" = "/models/$MODEL/manifest.json" ]'
check "manifest served" 'curl -sf "$URL/models/$MODEL/manifest.json" | cmp -s - "$T/frags/manifest.json"'

# the biggest fragment, to have room for ranges
SHA=$(ls -S "$T/frags" | grep '\.esf$' | head -1 | sed 's/\.esf$//')
F=$T/frags/$SHA.esf
SIZE=$(stat -c %s "$F")
check "/fragments whole: 200 and sha256 equal" '[ "$(curl -sf "$URL/fragments/$SHA" | sha256sum | cut -c1-64)" = "$SHA" ]'
CODE=$(curl -s -o "$T/range" -w '%{http_code}' -H 'Range: bytes=100-1099' "$URL/fragments/$SHA")
check "/fragments range: 206" '[ "$CODE" = 206 ]'
check "/fragments range: bytes equal" 'dd if="$F" bs=1 skip=100 count=1000 2>/dev/null | cmp -s - "$T/range"'
check "/fragments range: Content-Range" 'curl -s -D - -o /dev/null -H "Range: bytes=100-1099" "$URL/fragments/$SHA" | tr -d "\r" | grep -qi "^content-range: bytes 100-1099/$SIZE$"'
CODE=$(curl -s -o "$T/tail" -w '%{http_code}' -H 'Range: bytes=-500' "$URL/fragments/$SHA")
check "/fragments suffix range" '[ "$CODE" = 206 ] && tail -c 500 "$F" | cmp -s - "$T/tail"'
CODE=$(curl -s -o "$T/open" -w '%{http_code}' -H "Range: bytes=$((SIZE - 10))-" "$URL/fragments/$SHA")
check "/fragments open range (resume)" '[ "$CODE" = 206 ] && tail -c 10 "$F" | cmp -s - "$T/open"'
check "/fragments range past the end: 416" '[ "$(curl -s -o /dev/null -w "%{http_code}" -H "Range: bytes=$SIZE-" "$URL/fragments/$SHA")" = 416 ]'
check "/fragments If-Range other etag: whole file" '[ "$(curl -s -o /dev/null -w "%{http_code}" -H "Range: bytes=0-9" -H "If-Range: \"x\"" "$URL/fragments/$SHA")" = 200 ]'
check "/fragments ETag" 'curl -s -D - -o /dev/null "$URL/fragments/$SHA" | tr -d "\r" | grep -qi "^etag: \"$SHA\"$"'
check "/fragments unknown id: 404" '[ "$(curl -s -o /dev/null -w "%{http_code}" "$URL/fragments/$(printf "%064d" 0)")" = 404 ]'
check "/fragments malformed id: 404" '[ "$(curl -s -o /dev/null -w "%{http_code}" "$URL/fragments/../relay.db")" = 404 ]'
check "web folder: /" 'curl -sf "$URL/" | grep -q "<title>essaim</title>"'
check "web folder: file and type" 'curl -s -D - -o /dev/null "$URL/app/main.js" | tr -d "\r" | grep -qi "^content-type: text/javascript"'
check "web folder: no escape" '[ "$(curl -s -o /dev/null -w "%{http_code}" --path-as-is "$URL/../../etc/passwd")" != 200 ]'

BEFORE=$(curl -sf "$URL/api/stats" | json 'd["counters"]["http_requests"]')
stop
check "restart" start
AFTER=$(curl -sf "$URL/api/stats" | json 'd["counters"]["http_requests"]')
check "restart keeps counters from the database ($BEFORE -> $AFTER)" '[ "$AFTER" -gt "$BEFORE" ]'
check "restart keeps serving" '[ "$(curl -sf "$URL/fragments/$SHA" | sha256sum | cut -c1-64)" = "$SHA" ]'
stop
check "--help lists every flag" '"$RELAY" --help | grep -q -- "--tls-key" && "$RELAY" --help | grep -q -- "--heartbeat"'
check "bad flag exits non-zero" '! "$RELAY" --replicas 0 --store "$T/store" 2>/dev/null'

echo "relay_basic: $pass passed, $fail failed"
[ "$fail" = 0 ]
