#!/bin/sh
# setup.sh [--tests] - install what essaim needs on Debian bookworm (when missing) and build it.
#
# Installs Debian packages with apt-get (as root, or through sudo), builds the native tree
# (build/), the wasm core (build/wasm/essaim.wasm), and with --tests also the ASan+UBSan
# tree (build-asan/), the libFuzzer targets (build-fuzz/) and the npm packages the tests
# use (npm ci from lock files). Safe to run again: it only does what is missing or stale.
set -eu
cd "$(dirname "$0")/.."

tests=0
for a in "$@"; do
  case "$a" in
    --tests) tests=1 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done

PKGS="build-essential cmake pkg-config clang lld wasi-libc libclang-rt-14-dev-wasm32
      clang-16 lld-16 libclang-rt-16-dev-wasm32
      libwebsockets-dev libzstd-dev libjansson-dev libssl-dev libsqlite3-dev openssl"
[ "$tests" = 1 ] && PKGS="$PKGS chromium"
command -v node >/dev/null 2>&1 || PKGS="$PKGS nodejs"
command -v npm >/dev/null 2>&1 || PKGS="$PKGS npm"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup: need root to install:$missing (run as root, or install them yourself)" >&2; exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
build() { # build DIR [cmake options...]
  d=$1; shift
  [ -f "$d/CMakeCache.txt" ] || cmake -S . -B "$d" "$@" >/dev/null
  cmake --build "$d" -j "$jobs" 2>&1 | grep -E "error|warning: |Error" || true
  cmake --build "$d" -j "$jobs" >/dev/null
}

echo "setup: building native (build/)"
build build -DCMAKE_BUILD_TYPE=Release
echo "setup: building wasm (build/wasm/essaim.wasm)"
make -s -f Makefile.emscripten-free >/dev/null

if [ "$tests" = 1 ]; then
  echo "setup: building ASan+UBSan (build-asan/)"
  build build-asan -DCMAKE_BUILD_TYPE=Debug -DESSAIM_SANITIZE=ON
  echo "setup: building fuzzers (build-fuzz/)"
  CC=clang build build-fuzz -DCMAKE_BUILD_TYPE=Debug -DESSAIM_FUZZ=ON
  # tests/ref (node-llama-cpp, llama.cpp's prebuilt CPU build) has its own installer: its
  # optional per-platform packages were never all published, so plain `npm ci` refuses it.
  [ -d tests/ref/node_modules/node-llama-cpp ] || { echo "setup: installing llama.cpp reference (tests/ref)"; sh tests/ref/setup.sh >/dev/null; }
  if [ ! -d tests/web/node_modules ]; then
    echo "setup: npm ci in tests/web"
    (cd tests/web && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
fi
echo "setup: done"
