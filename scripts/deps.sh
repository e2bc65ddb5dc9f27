#!/usr/bin/env bash
# Install the Debian packages bmplan needs to build and test, when missing.
# As root it runs apt-get; otherwise it prints the command to run.
set -eu
pkgs="libjansson-dev libyaml-dev libzstd-dev check pkg-config libopenblas-dev zstd jq"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "scripts/deps.sh: installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends $missing >&2
else
    echo "bmplan needs:$missing" >&2
    echo "run: sudo apt-get install -y$missing" >&2
    exit 1
fi
