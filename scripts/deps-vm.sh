#!/usr/bin/env bash
# Installs the Debian packages that scripts/rxe-vm needs (a qemu guest running
# Debian's kernel with the Soft-RoCE driver rdma_rxe), only when something is
# missing. Quiet when everything is present.
#
# Usage: scripts/deps-vm.sh            (run it)
#        source scripts/deps-vm.sh     (defines deps_vm_install; runs nothing)

DEPS_VM_PACKAGES=(
  qemu-system-x86 linux-image-amd64 rdma-core ibverbs-utils ibverbs-providers
  perftest rdmacm-utils busybox-static cpio kmod iproute2
  libibverbs-dev librdmacm-dev libclang-dev pkg-config
)

deps_vm_install() {
  local want=() p sudo=""
  for p in "${DEPS_VM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || want+=("$p")
  done
  if ((${#want[@]})); then
    echo "deps-vm.sh: installing ${want[*]}" >&2
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    # linux-image-amd64's postinst hooks (initramfs-tools, a bootloader) may
    # fail inside a container; what the guest needs is only the vmlinuz and the
    # modules, so tolerate a failing hook when those are in place.
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
         --no-install-recommends "${want[@]}" >/dev/null; then
      echo "deps-vm.sh: apt-get install reported an error; checking what landed" >&2
      DEBIAN_FRONTEND=noninteractive $sudo dpkg --configure -a >/dev/null 2>&1 || true
    fi
  fi
  # Verify what rxe-vm actually uses.
  local k ok=0
  for k in /boot/vmlinuz-*; do
    [[ -f $k && -d /lib/modules/${k#/boot/vmlinuz-}/kernel ]] && ok=1
  done
  if ((!ok)); then
    echo "deps-vm.sh: no /boot/vmlinuz-* with matching /lib/modules found" >&2
    return 1
  fi
  local c
  for c in qemu-system-x86_64 busybox ibv_devinfo rdma ib_send_lat; do
    command -v "$c" >/dev/null 2>&1 || [[ -x /bin/$c || -x /usr/bin/$c || -x /sbin/$c || -x /usr/sbin/$c ]] || {
      echo "deps-vm.sh: '$c' missing after install" >&2; return 1; }
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  deps_vm_install
fi
