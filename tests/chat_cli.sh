#!/bin/sh
# chat_cli.sh ESSAIM [TMPDIR] - drives `essaim chat` non-interactively.
#
# Always (synthetic model from `essaim synth`): --help, bad flags, unknown template, a
# turn with --template chatml and --system, empty messages, end of input.
# On stories260K.gguf (${ESSAIM_TEST_MODELS:-<repo>/../shared/models}; skipped when
# absent): the plain fallback; with --temp 0 the first answer is deterministic and equals
# `essaim run` on the same rendered prompt; /help, /stats; only the new turn is evaluated;
# /save then /load in a new process continues the conversation exactly as one process
# does; /clear; --stop; a full context; the answer streams (seen mid-answer through a
# fifo); SIGINT mid-answer stops the answer, not the program, and the partial answer
# stays in the conversation; SIGINT at the prompt exits 0; Ctrl-C through tmux when
# tmux is installed; --relay through a loopback relay and two nodes when those are built. Last line: "chat_cli: N passed, N failed".
set -u
ESSAIM=${1:?usage: chat_cli.sh ESSAIM [TMPDIR]}
case "$ESSAIM" in /*) ;; *) ESSAIM=$(pwd)/$ESSAIM ;; esac
here=$(cd "$(dirname "$0")" && pwd)
MODELS=${ESSAIM_TEST_MODELS:-$here/../../shared/models}
if [ $# -ge 2 ]; then tmp=$2; mkdir -p "$tmp"; else tmp=$(mktemp -d "${TMPDIR:-/tmp}/chat_cli-XXXXXX"); fi
tmux_sock="chat_cli_$$"
cleanup() {
    command -v tmux >/dev/null 2>&1 && tmux -L "$tmux_sock" kill-server 2>/dev/null
    [ -n "${ESS_KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() {
    failed=$((failed + 1)); echo "FAIL $1"
    for f in "$tmp/out" "$tmp/err"; do [ -f "$f" ] && sed 's/^/    /' "$f" | tail -8; done
}
# chat ARGS... < input: stdout in $tmp/out, stderr in $tmp/err, status in $rc
chat() { "$ESSAIM" chat "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
# say TEXT ARGS...: chat with TEXT (printf format, no arguments) as its input; not through a
# pipe, which would run chat in a subshell and lose $rc
say() { printf "$1" >"$tmp/input"; shift; chat "$@" <"$tmp/input"; }
has() { grep -qF -- "$1" "$2"; }
# the Nth answer (1-based) of a transcript: the line after the Nth "> " prompt line echoing input
answer() { awk -v n="$1" '/^> /{k++; next} k==n && !done {print; done=1}' "$2"; }
T1="-t 1" # one thread: the machine is shared and the model tiny

# ---- without models: flags and a synthetic model ----
"$ESSAIM" chat --help >"$tmp/out" 2>&1
if [ $? = 0 ] && has "--template NAME" "$tmp/out" && has "--system TEXT" "$tmp/out" && has "--max-tokens" "$tmp/out"; then
    ok "--help"; else fail "--help"; fi
chat </dev/null
if [ $rc = 2 ] && has "no MODEL" "$tmp/err"; then ok "no MODEL: exit 2"; else fail "no MODEL"; fi
chat "$tmp/none.gguf" --bogus </dev/null
if [ $rc = 2 ] && has "unknown option '--bogus'" "$tmp/err"; then ok "unknown option: exit 2"; else fail "unknown option"; fi
chat "$tmp/none.gguf" --temp </dev/null
if [ $rc = 2 ] && has "--temp wants a value" "$tmp/err"; then ok "missing value: exit 2"; else fail "missing value"; fi
chat "$tmp/none.gguf" --template nosuch </dev/null
if [ $rc = 2 ] && has "unknown template 'nosuch'" "$tmp/err"; then ok "unknown template: exit 2"; else fail "unknown template"; fi
chat "$tmp/none.gguf" </dev/null
if [ $rc = 1 ] && has "none.gguf" "$tmp/err"; then ok "missing model file: exit 1 naming it"; else fail "missing model file"; fi

syn="$tmp/syn.gguf"
if "$ESSAIM" synth -o "$syn" --type Q8_0 --layers 2 --embd 64 --heads 4 --ff 128 --vocab-size 512 --ctx 256 >"$tmp/out" 2>&1; then
    say 'hello\n\n/stats\n' "$syn" $T1 --template chatml --system "Be brief." --temp 0 -n 8
    if [ $rc = 0 ] && has "template chatml" "$tmp/out" && has "3 messages" "$tmp/out" && has "empty message" "$tmp/err"; then
        ok "synthetic: chatml turn with a system prompt, empty message refused"
    else fail "synthetic chatml turn"; fi
    a1=$(answer 1 "$tmp/out")
    say 'hello\n' "$syn" $T1 --template chatml --system "Be brief." --temp 0 -n 8
    if [ "$(answer 1 "$tmp/out")" = "$a1" ]; then ok "synthetic: --temp 0 answer is deterministic"; else fail "synthetic determinism"; fi
    chat "$syn" $T1 </dev/null
    if [ $rc = 0 ] && has "plain template" "$tmp/err"; then ok "synthetic: no chat template -> plain, EOF exits 0"; else fail "synthetic plain fallback"; fi
else
    fail "essaim synth"
fi

# ---- stories260K ----
M="$MODELS/stories260K.gguf"
if [ ! -f "$M" ]; then
    echo "skip stories260K tests: $M not found"
    echo "chat_cli: $passed passed, $failed failed"
    [ $failed = 0 ]; exit
fi
G="$T1 --temp 0 -n 64"

say 'Once upon a time\n/help\n/stats\n/exit\nnot read\n' "$M" $G
first=$(answer 1 "$tmp/out")
if [ $rc = 0 ] && has "no chat template" "$tmp/err" && has "template plain" "$tmp/err"; then ok "plain fallback announced"; else fail "plain fallback"; fi
if has "/save FILE" "$tmp/out" && has "/load FILE" "$tmp/out" && has "/clear" "$tmp/out"; then ok "/help"; else fail "/help"; fi
if has "context: 83 of 2048 tokens used" "$tmp/out" && has "answer 64 tokens" "$tmp/out" && has "tok/s" "$tmp/out"; then
    ok "/stats: context use, prefill and decode speed"; else fail "/stats"; fi
if ! has "not read" "$tmp/out"; then ok "/exit stops reading"; else fail "/exit"; fi
case "$first" in "Anna, Anna, I'm ready to come back to the park."*) ok "first answer (--temp 0): $(echo "$first" | cut -c1-40)...";;
    *) fail "first answer is '$first'";; esac
# the same prompt through `essaim run`: the rendered plain template, greedy, 64 tokens
"$ESSAIM" run "$M" $G -p "$(printf 'User: Once upon a time\nAssistant:')" >"$tmp/run" 2>/dev/null
if [ "$(sed -n 1p "$tmp/run" | sed 's/^ *//')" = "$first" ]; then ok "chat's first answer = essaim run on the rendered prompt"
else fail "chat vs run: '$(sed -n 1p "$tmp/run")'"; fi

# two turns in one process; the second evaluates only the new turn
say 'Once upon a time\nTom had a dog\n/stats\n' "$M" $G
two=$(answer 2 "$tmp/out")
ev=$(sed -n 's/^last turn: \([0-9]*\) prompt tokens evaluated.*/\1/p' "$tmp/out")
used=$(sed -n 's/^context: \([0-9]*\) of.*/\1/p' "$tmp/out")
if [ -n "$ev" ] && [ -n "$used" ] && [ "$ev" -gt 0 ] && [ "$ev" -lt 40 ] && [ "$used" -gt 150 ]; then
    ok "second turn evaluates $ev new tokens of $used in context"; else fail "incremental evaluation (ev '$ev', used '$used')"; fi

# /save, then /load in a new process and go on: the same second answer
printf 'Once upon a time\n/save %s\n' "$tmp/conv.json" >"$tmp/input"
chat "$M" $G <"$tmp/input"
if has "saved 2 messages" "$tmp/out" && has '"template": "plain"' "$tmp/conv.json" && has '"role": "assistant"' "$tmp/conv.json"; then
    ok "/save writes JSON with the template"; else fail "/save"; fi
printf '/load %s\nTom had a dog\n' "$tmp/conv.json" >"$tmp/input"
chat "$M" $G <"$tmp/input"
if has "loaded 2 messages" "$tmp/out" && [ "$(answer 3 "$tmp/out")" = "$two" ] && [ -n "$two" ]; then
    ok "/load restores the conversation (next answer identical)"; else fail "/load: '$(answer 3 "$tmp/out")' vs '$two'"; fi
printf '{"messages": [{"role": "user"}]}' >"$tmp/bad.json"
printf '/load %s\n/load %s\n/stats\n' "$tmp/bad.json" "$tmp/nosuch.json" >"$tmp/input"
chat "$M" $G <"$tmp/input"
if [ $rc = 0 ] && has "message 0 needs" "$tmp/err" && has "nosuch.json" "$tmp/err" && has "0 messages" "$tmp/out"; then
    ok "/load of a bad or missing file: message, conversation unchanged"; else fail "/load bad file"; fi

# /clear: the same question again gives the same answer from an empty context
say 'Once upon a time\n/clear\nOnce upon a time\n/stats\n' "$M" $G
if has "conversation cleared" "$tmp/out" && [ "$(answer 3 "$tmp/out")" = "$first" ] && has "context: 83 of" "$tmp/out"; then
    ok "/clear"; else fail "/clear"; fi

# --stop: the answer ends before the stop string, which is not shown
say 'Once upon a time\n' "$M" $G --stop " park"
if [ "$(answer 1 "$tmp/out")" = "Anna, Anna, I'm ready to come back to the" ] && ! has "answer cut" "$tmp/err"; then
    ok "--stop ends the answer before the string"; else fail "--stop: '$(answer 1 "$tmp/out")'"; fi

# a small context: the answer fills it, then the conversation no longer fits
say 'Once upon a time\nTom had a dog and a cat and they played\n' "$M" $T1 --temp 0 -n 0 --ctx 40
if [ $rc = 0 ] && has "context of 40 tokens is full" "$tmp/err" && has "/clear" "$tmp/err" && has "longer than the context of 40" "$tmp/err"; then
    ok "full context: said clearly, /clear suggested"; else fail "full context"; fi
say '/unknown\n' "$M" $G
if [ $rc = 0 ] && has "unknown command /unknown" "$tmp/err"; then ok "unknown /command"; else fail "unknown /command"; fi

# streaming and SIGINT through a fifo: slow tokens (--token-delay), answer seen mid-way,
# SIGINT ends the answer; the program goes on (/save shows the partial answer kept)
fifo="$tmp/in"
mkfifo "$fifo"
"$ESSAIM" chat "$M" $T1 --temp 0 -n 0 --token-delay 100 <"$fifo" >"$tmp/out" 2>"$tmp/err" &
pid=$!
exec 3>"$fifo"
printf 'Once upon a time\n' >&3
i=0
while [ $i -lt 100 ] && [ "$(wc -c <"$tmp/out")" -lt 40 ]; do sleep 0.1; i=$((i + 1)); done
if [ "$(wc -c <"$tmp/out")" -ge 40 ] && [ "$(grep -c '^> ' "$tmp/out")" = 1 ]; then ok "the answer streams (text before the answer ends)"
else fail "streaming"; fi
kill -INT $pid
i=0
while [ $i -lt 50 ] && ! has "[stopped]" "$tmp/err"; do sleep 0.1; i=$((i + 1)); done
if has "[stopped]" "$tmp/err" && kill -0 $pid 2>/dev/null; then ok "SIGINT mid-answer stops the answer, not the program"; else fail "SIGINT mid-answer"; fi
printf '/save %s\n/exit\n' "$tmp/part.json" >&3
exec 3>&-
wait $pid
rc=$?
part=$(sed -n 's/^ *"content": "\(.*\)"$/\1/p' "$tmp/part.json" 2>/dev/null | sed -n 2p)
if [ $rc = 0 ] && [ -n "$part" ] && [ ${#part} -lt ${#first} ]; then
    case "$first" in "$part"*) ok "partial answer kept in the conversation (${#part} bytes)";; *) fail "partial answer '$part'";; esac
else fail "partial answer / exit after SIGINT (rc $rc, '$part')"; fi

# SIGINT at the prompt exits cleanly
"$ESSAIM" chat "$M" $T1 <"$fifo" >"$tmp/out" 2>"$tmp/err" &
pid=$!
exec 3>"$fifo"
i=0
while [ $i -lt 100 ] && ! has "> " "$tmp/out"; do sleep 0.1; i=$((i + 1)); done
sleep 0.2
kill -INT $pid
wait $pid
rc=$?
exec 3>&-
if [ $rc = 0 ]; then ok "SIGINT at the prompt exits 0"; else fail "SIGINT at the prompt (rc $rc)"; fi

# Ctrl-C typed in a terminal (tmux)
if command -v tmux >/dev/null 2>&1; then
    tx="tmux -L $tmux_sock"
        # the shell ignores Ctrl-C itself (trap :) so that it lives to write the exit status
    $tx new-session -d -x 200 -y 50 "sh -c 'trap : INT; \"$ESSAIM\" chat \"$M\" $T1 --temp 0 -n 0 --token-delay 100 2>&1; echo chat-exit=\$? >\"$tmp/tmux.rc\"'"
    i=0
    while [ $i -lt 100 ] && ! $tx capture-pane -p | grep -q '^>'; do sleep 0.1; i=$((i + 1)); done
    $tx send-keys 'Once upon a time' Enter
    sleep 1.5
    $tx send-keys C-c
    sleep 0.5
    $tx send-keys '/stats' Enter
    sleep 0.5
    $tx capture-pane -p >"$tmp/out"
    $tx send-keys C-c
    i=0
    while [ $i -lt 50 ] && [ ! -f "$tmp/tmux.rc" ]; do sleep 0.1; i=$((i + 1)); done
    if has "[stopped]" "$tmp/out" && has "context:" "$tmp/out" && [ "$(cat "$tmp/tmux.rc" 2>/dev/null)" = "chat-exit=0" ]; then
        ok "tmux: Ctrl-C stops the answer, /stats works after, Ctrl-C at the prompt exits 0"
    else fail "tmux Ctrl-C ($(cat "$tmp/tmux.rc" 2>/dev/null))"; fi
else
    echo "skip tmux Ctrl-C test: tmux not installed"
fi

# over a relay (optional: needs essaim-relay next to ESSAIM and `essaim node`): the same
# conversation as the local engine, byte for byte
RELAY=$(dirname "$ESSAIM")/essaim-relay
if [ -x "$RELAY" ] && "$ESSAIM" node --help >/dev/null 2>&1; then
    sw="$tmp/swarm"
    mkdir -p "$sw/asker"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + $$ % 20000)))
    pids=""
    if "$ESSAIM" fragment "$M" -o "$sw/frag" --max-size 64K >/dev/null 2>&1 && "$RELAY" --store "$sw/store" --add-model "$sw/frag" >/dev/null 2>&1; then
        cp "$sw/frag/manifest.json" "$sw/asker/"
        "$RELAY" --listen 127.0.0.1:$port --store "$sw/store" --db "$sw/relay.db" --replicas 1 --heartbeat 2 >"$sw/relay.log" 2>&1 &
        pids="$!"
        sleep 1
        for i in 1 2; do
            "$ESSAIM" node --relay ws://127.0.0.1:$port/ws --store "$sw/n$i" --budget 4M >"$sw/node$i.log" 2>&1 &
            pids="$pids $!"
        done
        sleep 6
        say 'Once upon a time\nTom had a dog\n' "$M" $G
        cp "$tmp/out" "$sw/local.out"
        say 'Once upon a time\nTom had a dog\n' --relay ws://127.0.0.1:$port/ws "$sw/asker" $G
        if [ $rc = 0 ] && cmp -s "$tmp/out" "$sw/local.out"; then ok "--relay: the conversation equals the local one"
        else fail "--relay (rc $rc)"; fi
        for p in $pids; do kill "$p" 2>/dev/null; done
        for p in $pids; do wait "$p" 2>/dev/null; done
    else
        fail "--relay: fragment / relay --add-model"
    fi
else
    echo "skip --relay test: $RELAY or essaim node not built"
fi

echo "chat_cli: $passed passed, $failed failed"
[ $failed = 0 ]
