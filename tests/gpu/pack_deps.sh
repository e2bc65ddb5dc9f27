#!/usr/bin/env bash
# Prepare build/gpu-carry/ for tests/gpu/device_check.sh, on this (Debian)
# machine, for a GPU machine that has no network and may lack bmplan's
# build dependencies:
#   deps.tar.gz  headers, libraries, pkg-config files and pkgconf from this
#                machine's packages (scripts/deps.sh), unpacked there into
#                /tmp/bmplan-deps and used only when pkg-config cannot find
#                the dependencies
#   prebuilt/    test_cuda, gpu_bench and libbmplan_cuda.so built here, used
#                only if building there fails
# Then run, on the GPU machine, `bash tests/gpu/device_check.sh` with
# build/gpu-carry carried along.
set -eu
cd "$(dirname "$0")/../.."
make -j2 all build/tests/gpu/test_cuda build/bench/gpu_bench >&2
out=build/gpu-carry
rm -rf "$out"
mkdir -p "$out/prebuilt"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkgs="libjansson-dev libjansson4 libyaml-dev libyaml-0-2 libzstd-dev libzstd1 check
      libsubunit-dev libsubunit0 libopenblas0-pthread libopenblas-pthread-dev libgfortran5
      libquadmath0 pkgconf pkgconf-bin libpkgconf3 pkg-config"
for p in $pkgs; do dpkg -L "$p"; done | sort -u | while read -r f; do
    case "$f" in
    */share/doc/* | */share/man/* | */share/lintian/* | */cmake/* | *liblapack* | *libblas* | \
        *openblas*.a) continue ;;
    esac
    if [ -L "$f" ]; then
        case "$(readlink "$f")" in /*) continue ;; esac # alternatives: not needed
    elif [ ! -f "$f" ]; then
        continue
    fi
    mkdir -p "$stage$(dirname "$f")"
    cp -a "$f" "$stage$f"
done
tar czf "$out/deps.tar.gz" -C "$stage" .
cp build/tests/gpu/test_cuda build/bench/gpu_bench "$out/prebuilt/"
[ -f build/libbmplan_cuda.so ] && cp build/libbmplan_cuda.so "$out/prebuilt/"
du -sh "$out"/* >&2
