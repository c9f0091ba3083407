#!/usr/bin/env bash
# The GPU check in one command, for a GPU machine without network that gets this working tree and the bundle
# (tools/gpu_bundle.sh) in .gpu/cuda; and its rehearsal here.
#
#   tools/gpu_check.sh [--out DIR] [--budget S]     on the GPU machine: unpack the bundle, check its libraries, then
#                                                   nvidia-smi, caffe device_query, Caffe's GPU unit tests of our
#                                                   layers + pycaffe's, caffe time -gpu 0 of every net (batch 64),
#                                                   one fold trained and compared with gpu_check/cpu_reference.json,
#                                                   the paper-schedule estimate, the generator with the time left
#                                                   -> DIR/gpu_check.json, DIR/gpu_check.log (default DIR gpu_check/)
#   tools/gpu_check.sh --dry-run [--out DIR] [--budget S]
#                                                   here: the same on the CPU build (.gpu/cpu) in a clean Debian root,
#                                                   every step but the GPU ones (default DIR gpu_check/dry_run,
#                                                   budget 7200)
#   tools/gpu_check.sh --reference [--seeds 0-2]    here: the CPU runs of the training schedule, one per seed ->
#                                                   gpu_check/cpu_reference.json (tools/env.sh's build)
#   tools/gpu_check.sh --check-libs [--variant V]   only unpack the bundle and check its libraries (ldd)
# Options: --bundle DIR (the archives; default .gpu/cuda, .gpu/cpu for the CPU), --budget S (seconds for the whole
# check, default 360), --steps LIST (rerun some steps: info,gtests,pycaffe,timing,training,shared,estimate,
# generator), --mode gpu|cpu (what --dry-run runs inside the root).  GCNET_GPU_ROOT (default /tmp/gcnet-gpu): where
# the bundle is unpacked and the runs write; the bundle's data was made under the same path.
# Exit status: 0 ok, 1 a check failed, 2 bad usage or a missing bundle.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE=""
OUT=""
STEPS=""
BUDGET=""
MODE=gpu
ACTION=check
SEEDS="0-2"
# shellcheck source=tools/gpu_root.sh
source "$REPO/tools/gpu_root.sh"

die() { echo "gpu_check: $*" >&2; exit 2; }
need_arg() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) need_arg "$1" $#; OUT="$2"; shift ;;
    --bundle) need_arg "$1" $#; BUNDLE="$2"; shift ;;
    --budget) need_arg "$1" $#; BUDGET="$2"; shift ;;
    --mode) need_arg "$1" $#; MODE="$2"; shift ;;
    --variant) need_arg "$1" $#; MODE="$([ "$2" = cuda ] && echo gpu || echo "$2")"; shift ;;
    --seeds) need_arg "$1" $#; SEEDS="$2"; shift ;;
    --steps) need_arg "$1" $#; STEPS="$2"; shift ;;
    --dry-run) ACTION=dry-run; MODE=cpu ;;
    --reference) ACTION=reference ;;
    --check-libs) ACTION=check-libs ;;
    -h|--help) gpu_usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case "$MODE" in gpu|cpu) ;; *) die "--mode must be gpu or cpu, got '$MODE'" ;; esac
if [ -n "$BUDGET" ] && ! [[ "$BUDGET" =~ ^[0-9]+$ && "$BUDGET" -gt 0 ]]; then
  die "--budget must be a whole number of seconds > 0, got '$BUDGET'"
fi
VARIANT="$([ "$MODE" = gpu ] && echo cuda || echo cpu)"
BUNDLE="${BUNDLE:-$REPO/.gpu/$VARIANT}"
T0=$(date +%s)
stage() { printf '[gpu_check %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# ------------------------------------------------------------------ here: the CPU reference, the rehearsal
if [ "$ACTION" = reference ]; then
  [ -f "$REPO/tools/env.sh" ] || die "tools/env.sh is missing: run tools/setup.sh first"
  # shellcheck disable=SC1091
  source "$REPO/tools/env.sh"
  cd "$REPO"
  GCNET_GPU_ROOT="$GROOT" exec python -m gcnet.gpucheck reference --seeds "$SEEDS"
fi
if [ "$ACTION" = dry-run ]; then
  OUT="${OUT:-$REPO/gpu_check/dry_run}"
  for f in "gcnet-gpu-runtime-cpu.tar.xz" "gcnet-gpu-data.tar.xz"; do
    [ -f "$BUNDLE/$f" ] || die "no $BUNDLE/$f: make it with tools/gpu_bundle.sh --variant cpu"
  done
  gpu_root_prepare "$WORK" "$MIRROR"
  stage "rehearsal in a clean root: tools/gpu_check.sh --mode cpu --budget ${BUDGET:-7200} (results -> $OUT)"
  rc=0
  gpu_root_run "$WORK" "$BUNDLE" cpu "" -- tools/gpu_check.sh --mode cpu --bundle .gpu --out /work/out \
    --budget "${BUDGET:-7200}" ${STEPS:+--steps "$STEPS"} || rc=$?
  mkdir -p "$OUT"; cp "$WORK"/out/gpu_check.json "$WORK"/out/gpu_check.log "$OUT/" 2>/dev/null || true
  stage "rehearsal finished (exit $rc): $OUT/gpu_check.json, $OUT/gpu_check.log"
  exit $rc
fi

# ------------------------------------------------------------------ on the machine: unpack the bundle
RUNTIME_TAR="$BUNDLE/gcnet-gpu-runtime-$VARIANT.tar.xz"
DATA_TAR="$BUNDLE/gcnet-gpu-data.tar.xz"
B="$GROOT/runtime-$VARIANT/gcnet-gpu"
# unpack TAR PARENT TOP: the archive (one folder TOP) into PARENT, by tar + xz, else the machine's python3 (tarfile,
# lzma); skipped when PARENT/TOP holds this very archive already
unpack() {
  local tarball="$1" parent="$2" top="$3" key
  key="$(stat -c '%s %Y' "$tarball")"
  [ "$(cat "$parent/$top/.unpacked" 2>/dev/null)" = "$key" ] && return 0
  if [ -e "$parent/$top" ] && [ ! -f "$parent/$top/.unpacked" ]; then     # e.g. the data tools/gpu_bundle.sh made
    die "$parent/$top was not unpacked from a bundle: not replacing it (set GCNET_GPU_ROOT to another folder)"
  fi
  rm -rf "${parent:?}/$top"; mkdir -p "$parent"
  if command -v xz >/dev/null; then
    xz -dc "$tarball" | tar -C "$parent" -xf -
  elif command -v python3 >/dev/null; then
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2])" "$tarball" "$parent"
  else
    die "neither xz nor python3 here: cannot unpack $tarball"
  fi
  [ -d "$parent/$top" ] || die "$tarball holds no folder $top"
  echo "$key" > "$parent/$top/.unpacked"
}
# each archive, or what an earlier call unpacked from it (the runtime and the data carried in two calls, README)
need() {
  local tarball="$1" parent="$2" top="$3"
  if [ -f "$tarball" ]; then
    stage "unpacking $(basename "$tarball") -> $parent"
    unpack "$tarball" "$parent" "$top"
  elif [ -f "$parent/$top/.unpacked" ]; then
    stage "no $(basename "$tarball") carried: using $parent/$top, unpacked by an earlier call"
  else
    die "no $tarball (nor unpacked in $parent): make it with tools/gpu_bundle.sh --variant $VARIANT and carry .gpu/$VARIANT"
  fi
}
need "$RUNTIME_TAR" "$GROOT/runtime-$VARIANT" gcnet-gpu
[ "$ACTION" = check-libs ] || need "$DATA_TAR" "$GROOT" data

# ------------------------------------------------------------------ the machine's CUDA libraries (cuda bundle)
# sonames the bundle expects from the machine (manifest), searched in the wheels of its Python, the CUDA toolkit,
# /opt/gpu-wheels/lib (the clean root's stand-in for the wheels) and ldconfig's cache
NEEDED="$(sed -n 's/.*"libraries_of_the_gpu_machine": "\([^"]*\)".*/\1/p' "$B/manifest.json")"
CUDA_DIRS=""
if [ -n "$NEEDED" ]; then
  SEARCH=(/opt/gpu-wheels/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
  if command -v python3 >/dev/null; then
    while read -r d; do [ -d "$d/nvidia" ] && SEARCH+=("$d"/nvidia/*/lib); done \
      < <(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)
  fi
  for so in $NEEDED; do
    [ "$so" = libcuda.so.1 ] && continue              # the driver: the dynamic loader's own paths
    found=""
    for d in "${SEARCH[@]}"; do [ -e "$d/$so" ] && { found="$d"; break; }; done
    [ -n "$found" ] || found="$(ldconfig -p 2>/dev/null | awk -v s="$so" '$1 == s {print $NF; exit}' | xargs -r dirname)"
    [ -n "$found" ] || { echo "gpu_check: $so (cuBLAS/cuRAND of CUDA 13) is not on this machine; searched ${SEARCH[*]} and ldconfig" >&2; exit 1; }
    case ":$CUDA_DIRS:" in *":$found:"*) ;; *) CUDA_DIRS="${CUDA_DIRS:+$CUDA_DIRS:}$found" ;; esac
  done
  stage "CUDA libraries of this machine: $CUDA_DIRS"
fi

# ------------------------------------------------------------------ the bundle's libraries resolve (ldd)
SYSTEM_RE='^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1|libresolv\.so\.2|libstdc\+\+\.so\.6|libgcc_s\.so\.1|linux-vdso\.so\.1)$'
stage "checking the bundle's libraries: ldd of every ELF file (needs $(sed -n 's/.*"glibc_needed": "\([^"]*\)".*/\1/p' "$B/manifest.json"); here $(ldd --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+$'))"
# (each file's own folder too: a wheel's grafted libraries find each other through the run path of their loader)
bad=0; n=0
while read -r f; do
  n=$((n + 1))
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then
      if [[ "$name" = libcuda.so.1 && "$MODE" = cpu ]] || [[ "$name" = libcuda.so.1 && ! -e /dev/nvidiactl ]]; then
        continue                               # the driver: only where a GPU is
      fi
      echo "  NOT FOUND: $name (needed by ${f#$B/})"; bad=1
    elif [[ "$path" != "$B"/* && "$path" != /opt/gpu-wheels/* && ! "$name" =~ $SYSTEM_RE ]] \
         && ! { [ -n "$CUDA_DIRS" ] && [[ ":$CUDA_DIRS:" == *":$(dirname "$path"):"* ]]; }; then
      echo "  OUTSIDE THE BUNDLE: $name -> $path (needed by ${f#$B/})"; bad=1
    fi
  done < <(LD_LIBRARY_PATH="$B/lib:${f%/*}${CUDA_DIRS:+:$CUDA_DIRS}" ldd "$f" 2>&1 || true)
  if LD_LIBRARY_PATH="$B/lib:${f%/*}${CUDA_DIRS:+:$CUDA_DIRS}" ldd "$f" 2>&1 | grep -q "version .* not found"; then
    LD_LIBRARY_PATH="$B/lib:${f%/*}${CUDA_DIRS:+:$CUDA_DIRS}" ldd "$f" 2>&1 | grep "version .* not found" | sed 's/^/  /'; bad=1
  fi
done < <(find "$B" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c 'head -c 4 "$1" | grep -q ELF' _ {} \; -print)
[ "$bad" = 0 ] || { echo "gpu_check: the bundle's libraries do not all resolve (above)" >&2; exit 1; }
stage "$n ELF files: every library resolves inside the bundle${CUDA_DIRS:+ or to the CUDA libraries found here}, glibc and libstdc++ aside"
# shellcheck disable=SC1091
source "$B/env.sh" "$REPO" "$CUDA_DIRS"
stage "$(caffe --version 2>&1 | head -1); $(python -c 'import sys, numpy, caffe; print("python %s, numpy %s, pycaffe with layers: %d" % (sys.version.split()[0], numpy.__version__, len(caffe.layer_type_list())))' 2>&1 | tail -1)"
[ "$ACTION" = check-libs ] && exit 0

# ------------------------------------------------------------------ the check
OUT="${OUT:-$REPO/gpu_check}"
cd "$REPO"
GCNET_GPU_ROOT="$GROOT" exec python -m gcnet.gpucheck run --mode "$MODE" --out "$OUT" --budget "${BUDGET:-360}" \
  ${STEPS:+--steps "$STEPS"}
