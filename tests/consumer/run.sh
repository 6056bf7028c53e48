#!/usr/bin/env bash
# The install check: installs the build tree at $1 into a scratch prefix under
# $2, then, as users would:
#  1. builds this directory's CMake project with find_package(ioloop): main.c
#     on ioloop::ioloop, http_main.c on ioloop::http and ioloop::http_static;
#  2. builds main.c and http_main.c with plain `cc $(pkg-config --cflags --libs
#     ioloop[-http])`;
#  3. runs the installed helloworld with no LD_LIBRARY_PATH (its RPATH finds
#     the libraries) and fetches / from it;
#  4. builds http_main.c in a project that add_subdirectory()s the source tree
#     ($3), which must not define any tool or test target.
# Every program runs and must succeed. Needs CMAKE (the cmake binary).
set -euo pipefail
build=$1 work=$2 source=$3 here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
unset LD_LIBRARY_PATH
prefix=$work/prefix
"$CMAKE" --install "$build" --prefix "$prefix" >/dev/null

echo "--- 1. CMake consumer (find_package)"
"$CMAKE" -S "$here" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
"$CMAKE" --build "$work/cmake-build" -j2 >/dev/null
"$work/cmake-build/consumer"
"$work/cmake-build/http_consumer"
"$work/cmake-build/http_consumer_static"
if ldd "$work/cmake-build/http_consumer_static" | grep -q libioloop; then
  echo "http_consumer_static links a shared libioloop" >&2; exit 1
fi

echo "--- 2. pkg-config consumers"
pcdir=$(dirname "$(find "$prefix" -name ioloop-http.pc | head -1)")
libdir=$(dirname "$pcdir")
export PKG_CONFIG_PATH=$pcdir
cc -o "$work/pc-consumer" "$here/main.c" $(pkg-config --cflags --libs ioloop)
cc -o "$work/pc-http-consumer" "$here/http_main.c" $(pkg-config --cflags --libs ioloop-http)
LD_LIBRARY_PATH=$libdir "$work/pc-consumer"
LD_LIBRARY_PATH=$libdir "$work/pc-http-consumer"

echo "--- 3. installed helloworld, no LD_LIBRARY_PATH"
out=$work/helloworld.out
: >"$out" # before the start: the background shell may open it after our first read
"$prefix/bin/helloworld" --bind 127.0.0.1 --port 0 --threads 1 --pin no >"$out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
port=
for _ in $(seq 100); do
  port=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$out" || true)
  [[ -n $port ]] && break
  kill -0 $pid 2>/dev/null || { cat "$out" >&2; echo "installed helloworld did not start" >&2; exit 1; }
  sleep 0.1
done
[[ -n $port ]] || { cat "$out" >&2; echo "installed helloworld printed no port" >&2; exit 1; }
body=$(curl -sS --max-time 10 "http://127.0.0.1:$port/")
kill -TERM $pid && wait $pid || true
trap - EXIT
[[ $body == "Hello, world" ]] || { echo "installed helloworld answered '$body'" >&2; exit 1; }
echo "helloworld: $body"

echo "--- 4. add_subdirectory(ioloop) consumer"
"$CMAKE" -S "$here" -B "$work/subdir-build" -DIOLOOP_CONSUMER_SOURCE="$source" >/dev/null
"$CMAKE" --build "$work/subdir-build" --target http_consumer -j2 >/dev/null
"$work/subdir-build/http_consumer"
