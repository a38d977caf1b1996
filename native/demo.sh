#!/bin/sh
# demo.sh [MODEL.gguf] [--prompt TEXT] [--listen HOST:PORT] [--nodes N] - essaim's main job
# on one machine: a relay, a local swarm of nodes and the web chat page.
#
# Sets up what is missing (native/setup.sh: Debian packages, native and wasm builds), takes a
# GGUF model (default: the trained stories260K from ../shared/models, else a TinyLlama-shaped
# synthetic model made by `essaim synth`), then runs `essaim swarm`: it cuts the model into
# fragments, starts essaim-relay and N `essaim node` processes on loopback, waits until every
# fragment has 2 live replicas, and serves the chat page (open the URL it prints; Ctrl-C
# stops everything). With --prompt it instead prints the swarm's continuation and exits.
set -eu
cd "$(dirname "$0")/.."
model="" prompt="" listen="127.0.0.1:8080" nodes=6
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -p|--prompt) prompt=${2:?--prompt needs a text}; shift 2 ;;
    --listen) listen=${2:?--listen needs HOST:PORT}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    -*) echo "demo.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    *) model=$1; shift ;;
  esac
done
./native/setup.sh
E=build/essaim

if [ -z "$model" ]; then
  models=${ESSAIM_TEST_MODELS:-../shared/models}
  if [ -f "$models/stories260K.gguf" ]; then
    model=$models/stories260K.gguf
  else
    model=build/demo/tinyllama-mini-Q4_K_M.gguf
    mkdir -p build/demo
    [ -f "$model" ] || $E synth -o "$model" --preset tinyllama-1.1b --layers 4 --embd 256 --ff 768 \
                        --heads 8 --kv-heads 2 --type Q4_K_M --seed 1
  fi
fi

# Small fragments for a small model, so that the swarm really spreads it over the nodes.
size=$(stat -c %s "$model")
if [ "$size" -lt 100000000 ]; then max=64K; else max=10M; fi

if [ -n "$prompt" ]; then
  exec $E swarm "$model" --nodes "$nodes" --replicas 2 --max-size "$max" -p "$prompt" -n 64 --temp 0
fi
echo "demo: serving $model from a swarm of $nodes nodes; open the chat page below (Ctrl-C stops)"
exec $E swarm "$model" --nodes "$nodes" --replicas 2 --max-size "$max" --serve --listen "$listen"
