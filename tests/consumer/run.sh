#!/usr/bin/env bash
# Installs the build tree at $1 into a scratch prefix under $2, then builds the
# consumer project with find_package(ioloop) and main.c with pkg-config, and
# runs both.
set -euo pipefail
build=$1 work=$2 here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
"$CMAKE" --install "$build" --prefix "$work/prefix" >/dev/null
"$CMAKE" -S "$here" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
"$CMAKE" --build "$work/cmake-build" >/dev/null
LD_LIBRARY_PATH="$work/prefix/lib:$work/prefix/lib/x86_64-linux-gnu" "$work/cmake-build/consumer"
pcdir=$(dirname "$(find "$work/prefix" -name ioloop.pc | head -1)")
cc -o "$work/pc-consumer" "$here/main.c" $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs ioloop)
LD_LIBRARY_PATH="$(dirname "$pcdir")" "$work/pc-consumer"
