#!/usr/bin/env bash
# The relocatable bundle that tools/gpu_check.sh runs on a GPU machine without network: Caffe (CUDA sm_90, or the CPU
# build for the rehearsal), every shared library it needs that the machine lacks, Python 3.11 with numpy 1.26 (the
# project's own), pycaffe, the Python layers' C kernel, Caffe's unit tests of our layers, and the check's data.
#
#   tools/gpu_bundle.sh [--variant cuda|cpu] [--out DIR] [--no-check] [--help]
#
# The Caffe build and its tests come from tools/setup.sh [--cuda] --runtest-cases "<the cases of our layers>"
# (cached; the CPU variant also runs those tests), the data from `python -m gcnet.gpucheck data` (cached under
# $GCNET_GPU_ROOT, default /tmp/gcnet-gpu: the same path on the GPU machine).
#
# Writes DIR (default .gpu/<variant>, ignored by git; the GPU call carries .gpu/cuda) with
#   gcnet-gpu-runtime-<variant>.tar.xz   unpacked by gpu_check.sh to $GCNET_GPU_ROOT/runtime-<variant>
#   gcnet-gpu-data.tar.xz                the synthetic set (images as same-size placeholders) + the seed-0 LMDBs
# and checks the runtime in a clean Debian root (debootstrap, no build cache): `ldd` of every ELF file must
# resolve inside the bundle, except glibc, libstdc++ and libgcc_s (on every Linux) and, for cuda, the driver and
# cuBLAS / cuRAND (the GPU machine's PyTorch wheels; gpu_check.sh finds them there).  README: "GPU builds".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VARIANT=cuda
OUT=""
CHECK=1
CACHE_ROOT="${CAFFE_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/gcnet-caffe}"
# shellcheck source=tools/gpu_root.sh
source "$REPO/tools/gpu_root.sh"

die() { echo "gpu_bundle: $*" >&2; exit 2; }
fail() { echo "gpu_bundle: FAILED: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) [ $# -ge 2 ] || die "--variant needs cuda or cpu"; VARIANT="$2"; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift ;;
    --no-check) CHECK=0 ;;
    -h|--help) gpu_usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case "$VARIANT" in cuda|cpu) ;; *) die "--variant must be cuda or cpu, got '$VARIANT'" ;; esac
OUT="${OUT:-$REPO/.gpu/$VARIANT}"
for t in patchelf xz tar ldd readelf strip; do command -v "$t" >/dev/null || die "$t is not installed"; done
T0=$(date +%s)
stage() { printf '[gpu_bundle %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"

# ------------------------------------------------------------------ 1. the Caffe build (tools/setup.sh, cached)
ENVF="$WORK/env-$VARIANT.sh"
CASES="$(cd "$REPO" && PYTHONPATH="$REPO" python3 -m gcnet.gpucheck cases)" || fail "the gtest cases of our layers"
stage "Caffe $VARIANT build and the unit tests of our layers: tools/setup.sh $([ "$VARIANT" = cuda ] && echo --cuda) --runtest-cases \"$CASES\" --no-face"
SETUP_ARGS=(--runtest-cases "$CASES" --no-face --env-file "$ENVF")
[ "$VARIANT" = cpu ] || SETUP_ARGS=(--cuda "${SETUP_ARGS[@]}")
"$REPO/tools/setup.sh" "${SETUP_ARGS[@]}" > "$WORK/setup-$VARIANT.log" 2>&1 \
  || { tail -n 20 "$WORK/setup-$VARIANT.log" >&2; fail "tools/setup.sh (log $WORK/setup-$VARIANT.log)"; }
# shellcheck disable=SC1090
source "$ENVF"
PREFIX="$CAFFE_ROOT"
RT="$CAFFE_RUNTEST_DIR"
[ -x "$RT/build/test.testbin" ] || fail "no test binary at $RT/build/test.testbin"
PYBASE="$("$VIRTUAL_ENV/bin/python" -c 'import sys; print(sys.base_prefix)')"
PYVER="$("$VIRTUAL_ENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
SITE="$("$VIRTUAL_ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CUDA_LIBDIR=""; [ -f "$PREFIX/cuda_extra_libs" ] && CUDA_LIBDIR="$(cat "$PREFIX/cuda_extra_libs")"

# ------------------------------------------------------------------ 2. the tree
STAGE_DIR="$WORK/stage-$VARIANT"
B="$STAGE_DIR/gcnet-gpu"
rm -rf "$STAGE_DIR"; mkdir -p "$B"/{bin,lib,site,kernels,python/bin,caffe-tests/src/caffe/test,caffe-tests/python}
stage "staging in $B"
cp "$PREFIX/bin/caffe" "$B/bin/"
cp "$RT/build/test.testbin" "$B/bin/"
cp -P "$PREFIX"/lib/libcaffe.so* "$B/lib/"
cp -r "$RT/caffe/src/caffe/test/test_data" "$B/caffe-tests/src/caffe/test/"
cp "$RT"/caffe/python/caffe/test/test_*.py "$B/caffe-tests/python/"
# Python: the interpreter and its standard library (no tests, Tk, IDLE, curses, sqlite, static library)
cp "$PYBASE/bin/python$PYVER" "$B/python/bin/"
ln -s "python$PYVER" "$B/python/bin/python3"; ln -s "../python/bin/python$PYVER" "$B/bin/python3"
ln -s python3 "$B/bin/python"
cp -L "$PYBASE/lib/libpython$PYVER.so.1.0" "$B/lib/"
STD="$B/python/lib/python$PYVER"
mkdir -p "$STD"
tar -C "$PYBASE/lib/python$PYVER" -cf - \
  --exclude=__pycache__ --exclude=site-packages --exclude='config-*' --exclude=test --exclude=tests \
  --exclude=idle_test --exclude=idlelib --exclude=tkinter --exclude=turtledemo --exclude=turtle.py \
  --exclude=ensurepip --exclude=lib2to3 --exclude=pydoc_data --exclude=sqlite3 --exclude=curses \
  --exclude='_tkinter.*' --exclude='_test*' --exclude='_ctypes_test.*' --exclude='xxlimited*' --exclude='_xx*' \
  --exclude='_curses*' --exclude='readline.*' --exclude='nis.*' --exclude='spwd.*' --exclude='ossaudiodev.*' \
  --exclude='_crypt.*' --exclude='_sqlite3.*' . | tar -C "$STD" -xf -
# site: pycaffe, the project's Python needs on the runner's paths (numpy, protobuf, lmdb, six), and placeholders
# for the two packages that only pycaffe's caffe.io imports (scikit-image, scipy: 150 MB, never called here)
CAFFE_PY="$(dirname "$(dirname "$(find "$PREFIX" -path '*/caffe/__init__.py' -not -path '*/test/*' | head -1)")")"
tar -C "$CAFFE_PY" -cf - --exclude=__pycache__ --exclude=imagenet caffe | tar -C "$B/site" -xf -
for p in numpy numpy.libs google lmdb six.py; do
  [ -e "$SITE/$p" ] || fail "no $p in $SITE"
  tar -C "$SITE" -cf - --exclude=__pycache__ --exclude=tests "$p" | tar -C "$B/site" -xf -
done
cp -r "$REPO/tools/gpu_bundle_stubs/." "$B/site/"
# the Python layers' C kernel, compiled here with the command the layers use (its name is the key they look for)
GCNET_KERNELS_DIR="$B/kernels" PYTHONPATH="$REPO/python_layers" "$VIRTUAL_ENV/bin/python" \
  -c "import gcnet_native; gcnet_native.build_all()"
strip --strip-unneeded "$B/bin/caffe" "$B/bin/test.testbin" "$B"/lib/libcaffe.so.*
# the interpreter's own binaries carry their symbol tables (23 MB of libpython's 23, 12 MB of lib-dynload): not needed
strip --strip-unneeded "$B/python/bin/python$PYVER" "$B/lib/libpython$PYVER.so.1.0" "$STD"/lib-dynload/*.so
find "$B" -name '*.pyc' -delete

# ------------------------------------------------------------------ 3. shared libraries
# the machine's own: glibc, the C++ runtime; cuda: the driver, cuBLAS and cuRAND (its PyTorch's wheels: 700 MB)
SYSTEM_RE='^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1|libresolv\.so\.2|libstdc\+\+\.so\.6|libgcc_s\.so\.1)$'
DEVICE_RE='^(libcuda\.so\.1|libcublas\.so\.[0-9]+|libcublasLt\.so\.[0-9]+|libcurand\.so\.[0-9]+)$'
# a file's own folder is searched too: a wheel's grafted libraries (numpy.libs/) find each other through the run
# path of the extension that loads them, which ldd of the library alone does not see
elf_files() { find "$1" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c 'head -c 4 "$1" | grep -q ELF' _ {} \; -print; }
stage "resolving shared libraries (ldd of every ELF file of the bundle)"
for f in "$B/bin/caffe" "$B/bin/test.testbin" "$B"/lib/libcaffe.so.*; do
  patchelf --set-rpath '$ORIGIN/../lib' "$f"         # (their build-cache paths out; lib/ in)
done
patchelf --set-rpath '$ORIGIN/../../lib' "$B/python/bin/python$PYVER"
for pass in 1 2; do        # a copied library's own needs resolve in the second pass
  while read -r f; do
    LD_LIBRARY_PATH="$B/lib:${f%/*}${CUDA_LIBDIR:+:$CUDA_LIBDIR}" ldd "$f" 2>/dev/null | awk '$2 == "=>" {print $1, $3}'
  done < <(elf_files "$B") | sort -u | while read -r name path; do
    if [[ "$name" =~ $SYSTEM_RE || "$name" =~ $DEVICE_RE ]]; then continue; fi
    [ "$path" != "not" ] || fail "$name is not found here (needed by the bundle)"
    case "$path" in "$B"/*) continue ;; esac
    [ -e "$B/lib/$name" ] || cp -L "$path" "$B/lib/$name"
  done
done
DEVICE_LIBS="$(while read -r f; do LD_LIBRARY_PATH="$B/lib:${f%/*}${CUDA_LIBDIR:+:$CUDA_LIBDIR}" ldd "$f" 2>/dev/null \
  | awk '$2 == "=>" {print $1}'; done < <(elf_files "$B") | sort -u | grep -E "$DEVICE_RE" | tr '\n' ' ' || true)"
GLIBC_NEED="$(while read -r f; do readelf -V "$f" 2>/dev/null | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?'; done \
  < <(elf_files "$B") | sort -uV | tail -1)"
GLIBCXX_NEED="$(while read -r f; do readelf -V "$f" 2>/dev/null | grep -oE 'GLIBCXX_[0-9]+\.[0-9]+(\.[0-9]+)?'; done \
  < <(elf_files "$B") | sort -uV | tail -1)"

# ------------------------------------------------------------------ 4. environment file and manifest
cat > "$B/env.sh" <<'EOF'
# The bundle's environment (generated by tools/gpu_bundle.sh).  Use:  source <bundle>/env.sh REPO [CUDA_LIBDIRS]
# REPO: the project checkout (its python_layers/ and gcnet/ are on PYTHONPATH); CUDA_LIBDIRS: where cuBLAS/cuRAND are.
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GCNET_BUNDLE="$B" CAFFE_ROOT="$B" GCNET_KERNELS_DIR="$B/kernels"
export PATH="$B/bin:$PATH"
export LD_LIBRARY_PATH="$B/lib${2:+:$2}"
export PYTHONHOME="$B/python"
export PYTHONPATH="$B/site:$1/python_layers:$1"
export GLOG_minloglevel="${GLOG_minloglevel:-1}"
unset PYTHONDONTWRITEBYTECODE VIRTUAL_ENV PYTHONSTARTUP PYTHONUSERBASE
EOF
echo "export CAFFE_BUILD=\"${PREFIX##*/caffe-}\"" >> "$B/env.sh"
NUMPY_VER="$("$VIRTUAL_ENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
cat > "$B/manifest.json" <<EOF
{"variant": "$VARIANT", "caffe_build": "${PREFIX##*/}", "test_build": "${RT##*/}",
 "python": "$("$VIRTUAL_ENV/bin/python" -c 'import platform; print(platform.python_version())')", "numpy": "$NUMPY_VER",
 "created": "$(date -u +%Y-%m-%dT%H:%MZ)", "git_commit": "$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)",
 "glibc_needed": "$GLIBC_NEED", "glibcxx_needed": "$GLIBCXX_NEED",
 "libraries_bundled": $(ls "$B/lib" | grep -v '^libcaffe' | sed 's/.*/"&"/' | paste -sd, | sed 's/^/[/;s/$/]/'),
 "libraries_of_the_machine": "glibc, libstdc++.so.6, libgcc_s.so.1",
 "libraries_of_the_gpu_machine": "$(echo $DEVICE_LIBS)",
 "root": "$GROOT"}
EOF
stage "bundle tree: $(du -sh "$B" | cut -f1), $(find "$B" -type f | wc -l) files, $(ls "$B/lib" | wc -l) libraries; needs $GLIBC_NEED, $GLIBCXX_NEED${DEVICE_LIBS:+; from the GPU machine: $DEVICE_LIBS}"
RUNTIME_TAR="$OUT/gcnet-gpu-runtime-$VARIANT.tar.xz"
stage "compressing -> $RUNTIME_TAR (xz -9, one thread)"
tar -C "$STAGE_DIR" -cf - gcnet-gpu | xz -9 -T1 > "$RUNTIME_TAR.partial"
mv "$RUNTIME_TAR.partial" "$RUNTIME_TAR"

# ------------------------------------------------------------------ 5. the data (made here: it needs OpenCV)
DATA_TAR="$OUT/gcnet-gpu-data.tar.xz"
stage "the check's data under $GROOT (synthetic set + seed-0 LMDBs; cached)"
( source "$REPO/tools/env.sh" && cd "$REPO" && GCNET_GPU_ROOT="$GROOT" python -m gcnet.gpucheck data ) \
  > "$WORK/data.log" 2>&1 || { tail -n 20 "$WORK/data.log" >&2; fail "the check's data (log $WORK/data.log)"; }
SET="$(cd "$GROOT/data" && ls -d ck+_*subjects_seed0)"         # the set and the seed-0 LMDBs (not the others)
DATA_KEY="$(cd "$GROOT/data" && find "$SET" lmdb-seed0 -type f -printf '%p %s %T@\n' | sort | sha256sum | cut -c1-12)"
if [ ! -f "$DATA_TAR" ] || [ "$(cat "$DATA_TAR.key" 2>/dev/null)" != "$DATA_KEY" ]; then
  stage "packing the data: images as placeholders, LMDBs as they are -> $DATA_TAR"
  HOLLOW="$WORK/data-hollow"
  rm -rf "$HOLLOW"; mkdir -p "$HOLLOW/data"
  ( source "$REPO/tools/env.sh" && cd "$REPO" && python -m gcnet.gpucheck hollow "$GROOT/data/$SET" "$HOLLOW/data/$SET" \
    && python -m gcnet.gpucheck hollow "$GROOT/data/lmdb-seed0" "$HOLLOW/data/lmdb-seed0" ) >/dev/null
  tar -C "$HOLLOW" --format=posix -cf - data | xz -9 -T1 > "$DATA_TAR.partial"
  mv "$DATA_TAR.partial" "$DATA_TAR"; echo "$DATA_KEY" > "$DATA_TAR.key"
  rm -rf "$HOLLOW"
fi
REPO_BYTES="$(git -C "$REPO" ls-files -co --exclude-standard -z | (cd "$REPO" && xargs -0 du -cb 2>/dev/null) | tail -1 | cut -f1)"
TOTAL=$(( $(stat -c %s "$RUNTIME_TAR") + $(stat -c %s "$DATA_TAR") + REPO_BYTES ))
stage "runtime $(( $(stat -c %s "$RUNTIME_TAR") / 1048576 )) MiB + data $(( $(stat -c %s "$DATA_TAR") / 1048576 )) MiB + working tree $(( REPO_BYTES / 1048576 )) MiB = $(( TOTAL / 1048576 )) MiB of the 64 MiB a call carries"
[ "$TOTAL" -le $(( 64 * 1048576 )) ] || stage "WARNING: over 64 MiB: carry the runtime and the data in two calls (README, GPU builds)"

# ------------------------------------------------------------------ 6. the clean-root check
if [ "$CHECK" = 1 ]; then
  stage "checking the runtime in a clean Debian root (no build cache; ldd of every ELF file)"
  gpu_root_prepare "$WORK" "$MIRROR"
  gpu_root_run "$WORK" "$OUT" "$VARIANT" "$CUDA_LIBDIR" -- tools/gpu_check.sh --check-libs --variant "$VARIANT" --bundle .gpu \
    || fail "the clean-root check (above)"
fi
stage "done: $RUNTIME_TAR, $DATA_TAR"
