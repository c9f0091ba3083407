# Sourced by tools/gpu_bundle.sh and tools/gpu_check.sh: the clean root in which the GPU bundle is checked and the
# check rehearsed.  A Debian 12 minbase made by debootstrap (plus xz-utils, the unpacker) and cached under WORK; each
# use gets a fresh copy of it holding this working tree as the GPU machine gets it (tracked and untracked files that
# git does not ignore, plus .gpu/), with /proc mounted and nothing of this machine's /usr, venv or build cache.

# the defaults both scripts share: the cached root, stages and logs (WORK), the check's root (GROOT: the same absolute
# path here, in the clean root and on the GPU machine), debootstrap's Debian mirror; the caller's header as --help
WORK="${GCNET_GPU_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/gcnet-gpu}"
GROOT="${GCNET_GPU_ROOT:-/tmp/gcnet-gpu}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
gpu_usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# gpu_root_prepare WORK MIRROR: the cached root WORK/root-bookworm (about 2 min the first time).
gpu_root_prepare() {
  local work="$1" mirror="$2" root="$1/root-bookworm"
  [ -f "$root/etc/debian_version" ] && [ -x "$root/usr/bin/xz" ] && return 0
  command -v debootstrap >/dev/null || { echo "gpu_root: debootstrap is not installed (apt-get install debootstrap)" >&2; return 2; }
  [ "$(id -u)" = 0 ] || { echo "gpu_root: the clean root needs root (debootstrap, chroot, mount)" >&2; return 2; }
  rm -rf "$root.partial"
  echo "[gpu_root] debootstrap --variant=minbase --include=xz-utils bookworm $root ($mirror)" >&2
  debootstrap --variant=minbase --include=xz-utils bookworm "$root.partial" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 15 "$work/debootstrap.log" >&2; echo "gpu_root: debootstrap failed (log $work/debootstrap.log)" >&2; return 1; }
  rm -rf "$root"; mv "$root.partial" "$root"
}

# gpu_root_run WORK BUNDLE_DIR VARIANT CUDA_LIBDIR -- COMMAND...: COMMAND (bash -c) in a fresh copy of the root, in
# /work/repo (this working tree; BUNDLE_DIR's archives of VARIANT and the data in /work/repo/.gpu); a cuda variant
# gets CUDA_LIBDIR (cuBLAS/cuRAND, as the GPU machine's wheels hold them) read-only at /opt/gpu-wheels/lib.
# /work/out of the root is copied to WORK/out afterwards.  Returns COMMAND's exit status.
gpu_root_run() {
  local work="$1" bundle="$2" variant="$3" cudalib="$4" repo rc=0
  shift 5
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local r="$work/run-root"
  gpu_root_cleanup "$r"
  rm -rf "$r"; cp -a "$work/root-bookworm" "$r"
  mkdir -p "$r/work/repo/.gpu" "$r/work/out"
  (cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -C "$r/work/repo" -xf -
  cp "$bundle/gcnet-gpu-runtime-$variant.tar.xz" "$bundle/gcnet-gpu-data.tar.xz" "$r/work/repo/.gpu/"
  mount -t proc proc "$r/proc"
  if [ "$variant" = cuda ] && [ -n "$cudalib" ]; then
    mkdir -p "$r/opt/gpu-wheels/lib"
    mount --bind "$cudalib" "$r/opt/gpu-wheels/lib" && mount -o remount,ro,bind "$r/opt/gpu-wheels/lib"
  fi
  chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /work/repo && $*" || rc=$?
  rm -rf "$work/out"; cp -a "$r/work/out" "$work/out"
  gpu_root_cleanup "$r"
  return $rc
}

gpu_root_cleanup() {
  local r="$1"
  for m in "$r/opt/gpu-wheels/lib" "$r/proc"; do
    if mountpoint -q "$m" 2>/dev/null; then umount "$m"; fi
  done
}
