#!/usr/bin/env bash
# Installs the Debian packages corewire needs, only when something is missing.
# Usage: scripts/deps.sh [build|bench|profile|vm|ceph ...]   (default: build)
#   bench: iperf3, the loopback TCP baseline of `corewire-perf bench --iperf3`
#   profile: perf (`perf stat`, `perf record`; see perf/README.md)
set -euo pipefail

declare -A PKG_GROUPS=(
  [build]="pkg-config libhwloc-dev libudev-dev libibverbs-dev librdmacm-dev libclang-dev"
  [bench]="iperf3"
  [profile]="linux-perf"
)

want=()
for g in "${@:-build}"; do
  [[ -n "${PKG_GROUPS[$g]:-}" ]] || { echo "deps.sh: unknown group '$g'" >&2; exit 2; }
  for p in ${PKG_GROUPS[$g]}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || want+=("$p")
  done
done

if ((${#want[@]})); then
  echo "deps.sh: installing ${want[*]}" >&2
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
