#!/bin/sh
# swarm_basic.sh - a whole swarm on loopback: fragment the test models, start essaim-relay
# on that store, start several `essaim node` processes (each its own store, identity and a
# small budget), wait until every fragment has its replicas, then check that
# `essaim run --relay` prints byte for byte what the local engine prints (greedy, 32
# tokens) on every test model. Then: the same over wss:// with a self-signed certificate
# (--insecure), a driver without --insecure refused by the certificate check, and a node
# killed mid-swarm (the relay fails over to the other replicas).
#
#   tests/swarm_basic.sh [BUILD_DIR]      (default build/; needs essaim and essaim-relay)
#   ESSAIM_TEST_MODELS=DIR                test models (default ../shared/models)
#   SWARM_NODES=N (default 4), SWARM_KEEP=1 keeps the scratch folder
# Prints "swarm_basic: N passed, N failed"; exit status 0 only when nothing failed.
# Without the test models it runs the same checks on small synthetic models. Every process it starts is stopped by
# its pid on exit.
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
[ -f "$BUILD" ] && BUILD=$(dirname "$BUILD") # tests/run.sh passes the essaim binary
ESSAIM=${ESSAIM_BIN:-$BUILD/essaim}
RELAY=${ESSAIM_RELAY_BIN:-$BUILD/essaim-relay}
MODELS=${ESSAIM_TEST_MODELS:-$SRC/../shared/models}
NODES=${SWARM_NODES:-4}
[ "$NODES" -ge 3 ] || NODES=3 # one is killed, two must remain for R=2
PASS=0
FAIL=0
PIDS=""
TMP=$(mktemp -d "${TMPDIR:-/tmp}/swarm_basic.XXXXXX")

cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    if [ "${SWARM_KEEP:-0}" = 1 ]; then echo "swarm_basic: scratch kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { PASS=$((PASS + 1)); echo "ok   $1"; }
ko() { FAIL=$((FAIL + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && sed 's/^/     | /' "$2" | tail -n 15; }

for b in "$ESSAIM" "$RELAY"; do
    [ -x "$b" ] || { echo "swarm_basic: $b not built"; echo "swarm_basic: 0 passed, 1 failed"; exit 1; }
done
LIST="stories260K-Q8_0 stories260K-Q4_0 stories260K-F16 stories260K-pad256-Q4_K_M stories260K-pad256-Q6_K stories260K-moe4x2-Q8_0"
if [ ! -f "$MODELS/stories260K-Q8_0.gguf" ]; then
    # No shared test models: the same checks on small models of our own making.
    echo "swarm_basic: no test models in $MODELS: using synthetic ones"
    MODELS=$TMP/synth
    mkdir -p "$MODELS"
    SHAPE="--preset tinyllama-1.1b --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 512 --vocab-size 512 --ctx 256 --seed 3"
    "$ESSAIM" synth -o "$MODELS/synth-Q8_0.gguf" --type Q8_0 $SHAPE >/dev/null 2>&1 &&
    "$ESSAIM" synth -o "$MODELS/synth-Q4_K_M.gguf" --type Q4_K_M $SHAPE >/dev/null 2>&1 &&
    "$ESSAIM" synth -o "$MODELS/synth-moe-Q4_0.gguf" --type Q4_0 --preset mixtral-mini --layers 2 --embd 256 --heads 8 \
        --kv-heads 2 --ff 256 --experts 4 --experts-used 2 --vocab-size 512 --ctx 256 --seed 3 >/dev/null 2>&1 ||
        { echo "swarm_basic: essaim synth failed"; echo "swarm_basic: 0 passed, 1 failed"; exit 1; }
    LIST="synth-Q8_0 synth-Q4_K_M synth-moe-Q4_0"
fi

# A free port: the kernel picks one for a throwaway listener (no fixed ports in tests).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + ($$ + $1) % 20000))
}

# ---- the models: each fragmented small, so that every node holds only part of each ----
STORE=$TMP/relay-store
mkdir -p "$STORE"
TOTAL=0
MODS=""
for m in $LIST; do
    [ -f "$MODELS/$m.gguf" ] || continue
    if ! "$ESSAIM" fragment "$MODELS/$m.gguf" -o "$TMP/frag-$m" --max-size 64K >"$TMP/fragment-$m.log" 2>&1; then
        ko "fragment $m" "$TMP/fragment-$m.log"; continue
    fi
    if ! "$RELAY" --store "$STORE" --add-model "$TMP/frag-$m" >"$TMP/add-$m.log" 2>&1; then
        ko "relay --add-model $m" "$TMP/add-$m.log"; continue
    fi
    sz=$(du -sk "$TMP/frag-$m" | cut -f1)
    TOTAL=$((TOTAL + sz))
    MODS="$MODS $m"
    # What the asker starts from: the manifest only; it fetches the rest from the relay.
    mkdir -p "$TMP/asker-$m"
    cp "$TMP/frag-$m/manifest.json" "$TMP/asker-$m/"
    "$ESSAIM" run "$MODELS/$m.gguf" -p "Once upon a time" -n 32 --temp 0 -t 1 >"$TMP/local-$m.txt" 2>"$TMP/local-$m.log" ||
        ko "local run $m" "$TMP/local-$m.log"
done
REPLICAS=2
# Room for every fragment R times over the nodes even after one node is killed, with
# slack: placement is greedy, and after a relay restart the first node back is given more.
BUDGET=$(( TOTAL * REPLICAS * 2 / (NODES - 1) + 256 ))K

# ---- one swarm: relay + nodes; $1 = scheme (ws|wss), $2 = tag ----
RELAY_PID=""
NODE_PIDS=""
start_swarm() {
    scheme=$1 tag=$2
    PORT=$(free_port 1)
    tls="" ins=""
    if [ "$scheme" = wss ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 30 -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1
        tls="--tls-cert $TMP/cert.pem --tls-key $TMP/key.pem"
        ins="--insecure"
    fi
    RELAY_ARGS="--listen 127.0.0.1:$PORT --store $STORE --db $TMP/relay-$tag.db --replicas $REPLICAS --heartbeat 2 $tls"
    # shellcheck disable=SC2086
    "$RELAY" $RELAY_ARGS >"$TMP/relay-$tag.log" 2>&1 &
    RELAY_PID=$!
    PIDS="$PIDS $RELAY_PID"
    URL="$scheme://127.0.0.1:$PORT/ws"
    HTTP=$( [ "$scheme" = wss ] && echo https || echo http )://127.0.0.1:$PORT
    NODE_PIDS=""
    i=1
    while [ $i -le "$NODES" ]; do
        # shellcheck disable=SC2086
        # node 1 splits each request over 2 threads; the others compute on one
        "$ESSAIM" node --relay "$URL" --store "$TMP/node$i-$tag" --budget "$BUDGET" $ins $( [ $i = 1 ] && echo "-t 2" ) \
            >"$TMP/node$i-$tag.log" 2>&1 &
        NODE_PIDS="$NODE_PIDS $!"
        PIDS="$PIDS $!"
        i=$((i + 1))
    done
}

# Waits until the relay reports every fragment at its replica target (60 s at most).
wait_covered() {
    t=0
    while [ $t -lt 120 ]; do
        s=$(curl -sk "$HTTP/api/stats" 2>/dev/null | tr -d ' \n')
        case "$s" in
            *'"lost":0,"under_replicated":0'* | *'"under_replicated":0,"lost":0'*) return 0 ;;
        esac
        sleep 0.5
        t=$((t + 1))
    done
    echo "$s" >"$TMP/stats-timeout.json"
    return 1
}

# Runs every model over the relay and compares with the local output.
compare_all() {
    tag=$1
    shift
    for m in $MODS; do
        # shellcheck disable=SC2068
        if "$ESSAIM" run --relay "$URL" $@ "$TMP/asker-$m" -p "Once upon a time" -n 32 --temp 0 \
            >"$TMP/swarm-$tag-$m.txt" 2>"$TMP/swarm-$tag-$m.log" && cmp -s "$TMP/local-$m.txt" "$TMP/swarm-$tag-$m.txt"; then
            ok "$tag $m: $(head -c 60 "$TMP/swarm-$tag-$m.txt")..."
        else
            { echo "local: $(cat "$TMP/local-$m.txt")"; echo "swarm: $(cat "$TMP/swarm-$tag-$m.txt")"; cat "$TMP/swarm-$tag-$m.log"; } >"$TMP/diff-$tag-$m.log"
            ko "$tag $m: swarm output differs from local" "$TMP/diff-$tag-$m.log"
        fi
    done
}

stop_swarm() {
    for p in $NODE_PIDS $RELAY_PID; do kill "$p" 2>/dev/null; done
    for p in $NODE_PIDS $RELAY_PID; do wait "$p" 2>/dev/null; done
}

# ---- 1. ws:// ----
start_swarm ws ws
if wait_covered; then
    ok "ws: $NODES nodes cover every fragment $REPLICAS times (budget $BUDGET each)"
    compare_all ws
    # The model by name only: the asker gets manifest, header and small tensors from the relay.
    m=$(echo $MODS | cut -d' ' -f1)
    if XDG_CACHE_HOME="$TMP/cache" "$ESSAIM" run --relay "$URL" "$m" -p "Once upon a time" -n 32 --temp 0 \
        >"$TMP/byname.txt" 2>"$TMP/byname.log" && cmp -s "$TMP/local-$m.txt" "$TMP/byname.txt"; then
        ok "ws: model named '$m', everything fetched from the relay, identical"
    else
        ko "ws: model by name" "$TMP/byname.log"
    fi
    # A node dies: the relay re-sends its requests to the other replica.
    victim=$(echo $NODE_PIDS | cut -d' ' -f1)
    kill -9 "$victim" 2>/dev/null
    wait "$victim" 2>/dev/null
    m=$(echo $MODS | cut -d' ' -f1)
    if "$ESSAIM" run --relay "$URL" "$TMP/asker-$m" -p "Once upon a time" -n 32 --temp 0 >"$TMP/failover.txt" 2>"$TMP/failover.log" &&
        cmp -s "$TMP/local-$m.txt" "$TMP/failover.txt"; then
        ok "ws: one node killed, $m still identical"
    else
        ko "ws: one node killed, output differs or failed" "$TMP/failover.log"
    fi
    # The relay restarts: the nodes come back by themselves (backoff with jitter), prove
    # what they hold again, and the swarm answers as before.
    released() { curl -sk "$HTTP/api/stats" 2>/dev/null | tr -d ' \n' | grep -o '"replicas_released":[0-9]*' | cut -d: -f2; }
    released_before=$(released)
    kill "$RELAY_PID" 2>/dev/null
    wait "$RELAY_PID" 2>/dev/null
    sleep 1
    # shellcheck disable=SC2086
    "$RELAY" $RELAY_ARGS >"$TMP/relay-ws-restarted.log" 2>&1 &
    RELAY_PID=$!
    PIDS="$PIDS $RELAY_PID"
    if wait_covered && "$ESSAIM" run --relay "$URL" "$TMP/asker-$m" -p "Once upon a time" -n 32 --temp 0 >"$TMP/restart.txt" \
        2>"$TMP/restart.log" && cmp -s "$TMP/local-$m.txt" "$TMP/restart.txt"; then
        ok "ws: relay restarted, nodes reconnected, $m still identical"
    else
        cat "$TMP/restart.log" "$TMP/node2-ws.log" >"$TMP/restart-all.log" 2>/dev/null
        ko "ws: relay restarted, swarm did not come back" "$TMP/restart-all.log"
    fi
    # Settling: the restarted relay waited for the nodes it knew instead of handing the
    # first one back everything, so it had no surplus to release (that emptied node stores).
    released_after=$(released)
    if grep -q "placement waits" "$TMP/relay-ws-restarted.log" && [ -n "$released_before" ] &&
        [ "$released_after" = "$released_before" ]; then
        ok "ws: restarted relay settled: no replica placed twice, none released ($released_after released in all)"
    else
        { echo "replicas released before the restart: $released_before, after: $released_after"; cat "$TMP/relay-ws-restarted.log"; } \
            >"$TMP/settle.log"
        ko "ws: restarted relay moved replicas while nodes came back" "$TMP/settle.log"
    fi
    # Nodes keep their identity and fragments in their stores.
    if grep -q "identity" "$TMP/node2-ws.log" && [ "$(ls "$TMP"/node2-ws/*.esf 2>/dev/null | wc -l)" -gt 0 ]; then
        ok "ws: node stores hold fragments and an identity"
    else
        ko "ws: node store empty" "$TMP/node2-ws.log"
    fi
else
    ko "ws: swarm not covered within 60 s" "$TMP/relay-ws.log"
fi
stop_swarm

# ---- 2. wss:// with a self-signed certificate ----
start_swarm wss wss
if wait_covered; then
    ok "wss: $NODES nodes joined over TLS (--insecure) and cover every fragment"
    m=$(echo $MODS | cut -d' ' -f1)
    MODS_SAVE=$MODS
    MODS="$m $(echo $MODS | tr ' ' '\n' | grep moe | head -n 1)"
    compare_all wss --insecure
    MODS=$MODS_SAVE
    # Without --insecure the driver must refuse the self-signed certificate.
    if "$ESSAIM" run --relay "$URL" "$TMP/asker-$m" -p "Once upon a time" -n 4 --temp 0 >/dev/null 2>"$TMP/verify.log"; then
        ko "wss: a self-signed certificate was accepted without --insecure" "$TMP/verify.log"
    else
        ok "wss: certificate verified (refused without --insecure)"
    fi
else
    ko "wss: swarm not covered within 60 s" "$TMP/relay-wss.log"
fi
stop_swarm

# ---- essaim swarm refuses sizes that could never cover the model, at once ----
first=$(echo $LIST | cut -d' ' -f1)
if timeout 30 "$ESSAIM" swarm "$MODELS/$first.gguf" --nodes 2 --budget 1K -p hi --dir "$TMP/tiny-budget" >"$TMP/budget.log" 2>&1; then
    ko "swarm --budget 1K: accepted" "$TMP/budget.log"
elif grep -q "smaller than the biggest fragment" "$TMP/budget.log"; then
    ok "swarm --budget below a fragment: refused at once, naming the sizes"
else
    ko "swarm --budget 1K: no clear error" "$TMP/budget.log"
fi

echo "swarm_basic: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
