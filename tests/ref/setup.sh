#!/bin/sh
# setup.sh [--force] - installs the llama.cpp reference harness (tests/ref/node_modules) from
# the committed lock file: node-llama-cpp 3.22.1 and its prebuilt linux-x64 CPU binaries.
#
# NODE_LLAMA_CPP_SKIP_DOWNLOAD stops node-llama-cpp's postinstall from fetching or building
# llama.cpp; --omit=optional skips the GPU (CUDA, Vulkan) and other platforms' binaries.
# Why `npm install` and not `npm ci`: node-llama-cpp 3.22.1 lists optional packages that
# were never published at that version (@node-llama-cpp/win-x64, mac-x64, linux-riscv64...),
# so no lock file can hold them and `npm ci` refuses every lock ("Missing: ... from lock
# file"). `npm install` with the lock present installs exactly the locked versions; the lock
# is restored afterwards should npm rewrite it. Safe to run again: nothing to do when the
# packages are already there.
set -eu
cd "$(dirname "$0")"
if [ "${1:-}" = "--force" ]; then rm -rf node_modules; fi
if [ -f node_modules/node-llama-cpp/package.json ] && [ -d node_modules/@node-llama-cpp/linux-x64/bins ]; then exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "tests/ref/setup.sh: npm not found (install nodejs and npm)" >&2; exit 1; }
lock=$(mktemp)
trap 'rm -f "$lock"' EXIT
cp package-lock.json "$lock"
NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --omit=optional --no-audit --no-fund --loglevel=error
cmp -s package-lock.json "$lock" || cp "$lock" package-lock.json
[ -d node_modules/@node-llama-cpp/linux-x64/bins ] || { echo "tests/ref/setup.sh: prebuilt llama.cpp binaries missing after install" >&2; exit 1; }
