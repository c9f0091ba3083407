#!/usr/bin/env bash
# One-command setup of the GCNet reproduction: BVLC Caffe 1.0 (+ pycaffe, Python layers) and the project venv.
#
#   tools/setup.sh            CPU-only Caffe (the default, whatever compilers are present)
#   tools/setup.sh --cuda     CUDA Caffe (nvcc must be on PATH; see README for GPU/CUDA versions)
#   tools/setup.sh --runtest  also build Caffe's own gtest suite against this build and run it (once per build key)
#   tools/setup.sh --runtest-cases "ConvolutionLayerTest ..."   the same for the sources of these gtest cases only
#   tools/setup.sh --help
#
# Caffe's source is Debian's source package `caffe` 1.0.0+git20180821.99bd997-8 (suite bullseye), fetched with
# `apt-get source` through a private apt configuration (own sources list, lists and cache under the cache dir),
# so the machine's apt sources stay untouched. Debian's patch series is applied, then patches/*.patch.
# The build is installed under $CAFFE_PREFIX (default ~/.cache/gcnet-caffe) in a folder keyed by a hash of
# source version + patches + build options, so a second run is a no-op and a changed patch triggers a rebuild.
set -euo pipefail

CAFFE_DEB_VERSION="1.0.0+git20180821.99bd997-8"
CAFFE_DEB_SUITE="bullseye"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${CAFFE_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/gcnet-caffe}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"
MODE=cpu
CUDA_ARCH_BIN="${CUDA_ARCH_BIN:-}"
SKIP_APT=0
SKIP_FACE=0
RUNTEST=0
RUNTEST_CASES=""
ENV_FILE="$REPO/tools/env.sh"

usage() {
  cat <<EOF
usage: tools/setup.sh [--cuda] [--cuda-arch "37 90"] [--runtest] [--runtest-cases "CASE ..."] [--no-apt] [--no-face]
                      [--env-file PATH] [--help]

Builds BVLC Caffe 1.0 with pycaffe and Python layers, creates the project venv and writes tools/env.sh.
Afterwards:  source tools/env.sh

  --cuda             build the CUDA variant (needs nvcc); default is CPU_ONLY even when nvcc is present
  --cuda-arch LIST   CUDA machine-code architectures (default: 90 if nvcc >= 11.8, plus 37 if nvcc <= 11.8)
  --runtest          then build Caffe's own unit tests (src/caffe/test, ~2000 gtest cases) against this build and
                     run them: CPU tests for a CPU build; for --cuda the binary is built, and run only where
                     nvidia-smi sees a GPU. Run once per build key; the result is cached beside the build
                     (runtest-<build>/), so a second call prints the cached result. Failures listed in
                     tools/caffe_known_failures.txt are reported as known; any other failure exits 1.
  --runtest-cases "CASE ..."  --runtest with only the test sources defining these gtest cases (e.g.
                     "ConvolutionLayerTest SyncedMemoryTest"), and only these cases run; cached beside the build
                     under a key of the list (tools/gpu_bundle.sh builds the GPU check's tests so)
  --no-apt           do not install apt build dependencies (they must already be present)
  --no-face          skip the optional face detector (mediapipe) used to align photos without landmarks
  --env-file PATH    where to write the environment file (default tools/env.sh)
Environment: CAFFE_PREFIX (cache root, now $CACHE_ROOT), PYTHON (now $PYTHON), JOBS (now $JOBS).
Remove the cache with:  rm -rf "$CACHE_ROOT"
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) MODE=cuda ;;
    --cuda-arch) CUDA_ARCH_BIN="${2:?--cuda-arch needs a list such as \"90\"}"; shift ;;
    --runtest) RUNTEST=1 ;;
    --runtest-cases) RUNTEST=1; RUNTEST_CASES="$(echo ${2:?--runtest-cases needs a list of gtest case names})"; shift ;;
    --no-apt) SKIP_APT=1 ;;
    --no-face) SKIP_FACE=1 ;;
    --env-file) ENV_FILE="${2:?--env-file needs a path}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

LOGDIR="$CACHE_ROOT/logs"
mkdir -p "$LOGDIR"
T0=$(date +%s)
stage() { printf '[setup %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { echo "setup: FAILED in stage '$1'. $2" >&2; exit 1; }
# run_logged STAGE LOGNAME CMD...: runs CMD with its output in a log; on failure names the stage and the log.
run_logged() {
  local st="$1" log="$LOGDIR/$2.log"; shift 2
  if ! "$@" >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    fail "$st" "Full log: $log"
  fi
}

# ---------------------------------------------------------------- 1. apt build dependencies
APT_PKGS=(build-essential cmake pkg-config dpkg-dev libboost-system-dev libboost-thread-dev libboost-filesystem-dev
  libboost-python-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev liblmdb-dev
  libsnappy-dev libopenblas-dev)
if [ "$SKIP_APT" = 0 ]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || fail "apt dependencies" "apt-get is not available; install these by hand and rerun with --no-apt: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    stage "installing apt build dependencies: ${missing[*]}"
    run_logged "apt dependencies (apt-get update)" apt-update $SUDO apt-get update
    run_logged "apt dependencies (apt-get install; no network to the Debian mirror?)" apt-install \
      env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  else
    stage "apt build dependencies present"
  fi
fi

# ---------------------------------------------------------------- 2. project venv (keyed by requirements)
command -v "$PYTHON" >/dev/null || fail "venv" "no '$PYTHON' on PATH (Python 3.11 expected; set PYTHON=...)"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
REQ_HASH="$(cat "$REPO/requirements.txt" "$REPO/requirements-face.txt" | sha256sum | cut -c1-12)"
VENV="$CACHE_ROOT/venv-py$PYVER-$REQ_HASH"
[ "$SKIP_FACE" = 0 ] || VENV="$VENV-noface"
if [ -f "$VENV/.complete" ]; then
  stage "venv up to date: $VENV"
else
  stage "creating venv $VENV (pip install -r requirements.txt)"
  rm -rf "$VENV"
  run_logged "venv (python -m venv)" venv "$PYTHON" -m venv "$VENV"
  run_logged "venv (pip install; no network to PyPI?)" pip "$VENV/bin/pip" install --disable-pip-version-check -r "$REPO/requirements.txt"
  if [ "$SKIP_FACE" = 0 ]; then
    run_logged "venv (face detector, pip install --no-deps)" pip-face \
      "$VENV/bin/pip" install --disable-pip-version-check --no-deps -r "$REPO/requirements-face.txt"
  fi
  touch "$VENV/.complete"
fi
NUMPY_VER="$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"

# ---------------------------------------------------------------- 3. build key
CMAKE_OPTS=(-DCMAKE_BUILD_TYPE=Release -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON -DBLAS=Open
  -Dpython_version=3 -DBUILD_python=ON -DBUILD_python_layer=ON -DBUILD_docs=OFF -DBUILD_SHARED_LIBS=ON)
if [ "$MODE" = cuda ]; then
  command -v nvcc >/dev/null || fail "cuda" "--cuda was given but nvcc is not on PATH"
  NVCC_VER="$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
  ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
  if [ -z "$CUDA_ARCH_BIN" ]; then
    ver_ge "$NVCC_VER" 11.8 && CUDA_ARCH_BIN="90"
    ver_ge 11.8 "$NVCC_VER" && CUDA_ARCH_BIN="37 ${CUDA_ARCH_BIN}"
    CUDA_ARCH_BIN="$(echo $CUDA_ARCH_BIN)"
  fi
  [ -n "$CUDA_ARCH_BIN" ] || fail "cuda" "could not pick an architecture for nvcc $NVCC_VER; pass --cuda-arch"
  PTX="${CUDA_ARCH_BIN##* }"
  CMAKE_OPTS+=(-DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DCUDA_ARCH_NAME=Manual "-DCUDA_ARCH_BIN=$CUDA_ARCH_BIN" "-DCUDA_ARCH_PTX=$PTX")
  # CUDA 13 ships no cuBLAS/cuRAND in the toolkit on some machines: take them from the PyPI wheels then.
  # the toolkit root (nvcc on PATH may be a wrapper script elsewhere)
  CUDA_ROOT="${CUDA_HOME:-}"
  [ -n "$CUDA_ROOT" ] || { [ -x /usr/local/cuda/bin/nvcc ] && CUDA_ROOT=/usr/local/cuda; } || true
  [ -n "$CUDA_ROOT" ] || CUDA_ROOT="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  CMAKE_OPTS+=("-DCUDA_TOOLKIT_ROOT_DIR=$CUDA_ROOT")
  if [ ! -e "$CUDA_ROOT/include/cublas_v2.h" ] && [ ! -e "$CUDA_ROOT/targets/x86_64-linux/include/cublas_v2.h" ]; then
    stage "no cuBLAS in $CUDA_ROOT: installing nvidia-cublas / nvidia-curand wheels into the venv"
    run_logged "cuda (pip install nvidia-cublas nvidia-curand)" pip-cuda "$VENV/bin/pip" install nvidia-cublas nvidia-curand
    NV="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')/nvidia"
    NVDIR="$(ls -d "$NV"/cu* 2>/dev/null | tail -1)"
    [ -n "$NVDIR" ] || NVDIR="$NV"
    for lib in cublas curand; do
      so="$(ls "$NVDIR"/lib/lib$lib.so.* 2>/dev/null | head -1)"
      [ -n "$so" ] || so="$(ls "$NV"/$lib/lib/lib$lib.so.* 2>/dev/null | head -1)"
      [ -n "$so" ] || fail "cuda" "lib$lib not found in the nvidia wheels under $NV"
      ln -sf "$so" "$(dirname "$so")/lib$lib.so"
      inc="$(dirname "$(dirname "$so")")/include"
      CMAKE_OPTS+=("-DCUDA_${lib}_LIBRARY=$(dirname "$so")/lib$lib.so")
      CUDA_EXTRA_INC="${CUDA_EXTRA_INC:-}${CUDA_EXTRA_INC:+;}$inc"
      CUDA_EXTRA_LIB="${CUDA_EXTRA_LIB:-}${CUDA_EXTRA_LIB:+:}$(dirname "$so")"
    done
    # FindCUDA unsets CUDA_<lib>_LIBRARY on a first configure (CUDA_TOOLKIT_ROOT_DIR differs from its internal
    # copy) and searches again: CMAKE_LIBRARY_PATH lets that search find the wheels' libraries.
    CMAKE_OPTS+=("-DCMAKE_LIBRARY_PATH=${CUDA_EXTRA_LIB//:/;}")
    CMAKE_OPTS+=("-DCMAKE_CXX_FLAGS=-I${CUDA_EXTRA_INC//;/ -I}" "-DCUDA_NVCC_FLAGS=-I${CUDA_EXTRA_INC//;/;-I}")
  fi
  MODE_TAG="cuda${NVCC_VER}-sm${CUDA_ARCH_BIN// /_}"
else
  CMAKE_OPTS+=(-DCPU_ONLY=ON)
  MODE_TAG="cpu"
fi
KEY="$( { echo "$CAFFE_DEB_VERSION"; cat "$REPO"/patches/*.patch; echo "${CMAKE_OPTS[*]}"; echo "py$PYVER numpy$NUMPY_VER"; } \
  | sha256sum | cut -c1-12)"
PREFIX="$CACHE_ROOT/caffe-$MODE_TAG-$KEY"
# Caffe's unit tests of this build (--runtest): all of them, or the sources of --runtest-cases (a key of the list)
RT="$CACHE_ROOT/runtest-$MODE_TAG-$KEY${RUNTEST_CASES:+-$(echo "$RUNTEST_CASES" | sha256sum | cut -c1-8)}"

# ---------------------------------------------------------------- 4. source + 5. build (skipped when cached)
SRC_ROOT="$CACHE_ROOT/src"
DSC="$SRC_ROOT/caffe_${CAFFE_DEB_VERSION}.dsc"
# fetch_source: downloads Debian's source package once (kept under $SRC_ROOT) and checks it against the .dsc.
fetch_source() {
  local APT_DIR="$CACHE_ROOT/apt"
  mkdir -p "$SRC_ROOT" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  if [ ! -f "$DSC" ]; then
    stage "fetching Debian source package caffe=$CAFFE_DEB_VERSION ($CAFFE_DEB_SUITE) with a private apt configuration"
    command -v apt-get >/dev/null || fail "source" "apt-get is not available"
    # The Debian mirror is the one this machine already uses (override with DEBIAN_MIRROR).
    MIRROR="${DEBIAN_MIRROR:-$( { grep -rhoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } | head -1 | tr -d ' ')}"
    [ -n "$MIRROR" ] || fail "source" "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR=<mirror>/debian"
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "deb-src [signed-by=$KEYRING] ${MIRROR%/} $CAFFE_DEB_SUITE main" > "$APT_DIR/sources.list"
    APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o "APT::Sandbox::User=root")
    run_logged "source (apt-get update on private sources; no network to the Debian mirror?)" apt-src-update \
      apt-get "${APT_OPTS[@]}" update
    (cd "$SRC_ROOT" && run_logged "source (apt-get source --download-only)" apt-source \
      apt-get "${APT_OPTS[@]}" source --download-only "caffe=$CAFFE_DEB_VERSION")
  fi
  stage "verifying source files against the SHA-256 sums in $(basename "$DSC")"
  sums="$(sed -n '/^Checksums-Sha256:/,/^[A-Z]/{/^ /p}' "$DSC")"
  [ -n "$sums" ] || fail "source" "no Checksums-Sha256 in $DSC"
  (cd "$SRC_ROOT" && echo "$sums" | awk '{print $1"  "$3}' | sha256sum --quiet -c -) \
    || { rm -f "$SRC_ROOT"/caffe_*; fail "source" "checksum mismatch; downloaded files removed, rerun to fetch again"; }
}
# unpack_source DIR: Debian's source tree with Debian's patch series and then patches/*.patch applied.
unpack_source() {
  stage "unpacking and applying Debian's patch series (dpkg-source -x)"
  run_logged "source (dpkg-source -x)" dpkg-source dpkg-source -x "$DSC" "$1"
  for p in "$REPO"/patches/*.patch; do
    stage "applying project patch $(basename "$p")"
    run_logged "patch $(basename "$p")" "patch-$(basename "$p" .patch)" patch -d "$1" -p1 -i "$p"
  done
}
# make_progress LOG DIR TARGET: make -jJOBS TARGET in DIR with a progress line every 30 s; on failure names the log.
make_progress() {
  local log="$1" dir="$2" target="$3"
  (
    make -C "$dir" -j"$JOBS" "$target" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null || break
      pct="$(grep -oE '^\[ *[0-9]+%\]' "$log" | tail -1 | tr -d '[] ')"
      stage "  compiling $target... ${pct:-0%}"
    done
    wait "$pid"
  ) || { tail -n 25 "$log" >&2; fail "compile $target" "Full log: $log"; }
}

if [ -f "$PREFIX/.complete" ]; then
  stage "Caffe build cached: $PREFIX"
else
  fetch_source
  BUILD_ROOT="$CACHE_ROOT/build-$MODE_TAG-$KEY"
  # an interrupted build of the same key (same source, patches and options) is resumed: make compiles what is left
  if [ -f "$BUILD_ROOT/.configured" ]; then
    stage "resuming the interrupted build in $BUILD_ROOT (configured for this key)"
  else
    rm -rf "$BUILD_ROOT"; mkdir -p "$BUILD_ROOT"
    unpack_source "$BUILD_ROOT/caffe"
    mkdir -p "$BUILD_ROOT/build"
    stage "configuring ($MODE_TAG): cmake ${CMAKE_OPTS[*]}"
    run_logged "cmake configure" cmake-$MODE_TAG cmake -S "$BUILD_ROOT/caffe" -B "$BUILD_ROOT/build" "${CMAKE_OPTS[@]}" \
      "-DCMAKE_INSTALL_PREFIX=$PREFIX.partial" "-DPYTHON_EXECUTABLE=$VENV/bin/python" \
      "-DPython_NumPy_INCLUDE_DIR=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')" \
      "-DNUMPY_INCLUDE_DIR=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
    touch "$BUILD_ROOT/.configured"
  fi
  stage "compiling with $JOBS jobs (about 7 min on 2 cores for CPU, 10 for CUDA); log: $LOGDIR/make-$MODE_TAG.log"
  make_progress "$LOGDIR/make-$MODE_TAG.log" "$BUILD_ROOT/build" all
  rm -rf "$PREFIX.partial"
  run_logged "install" install-$MODE_TAG make -C "$BUILD_ROOT/build" install
  [ -z "${CUDA_EXTRA_LIB:-}" ] || echo "$CUDA_EXTRA_LIB" > "$PREFIX.partial/cuda_extra_libs"
  touch "$PREFIX.partial/.complete"
  rm -rf "$PREFIX"; mv "$PREFIX.partial" "$PREFIX"
  rm -rf "$BUILD_ROOT"
  stage "Caffe installed in $PREFIX"
fi

# ---------------------------------------------------------------- 6. environment file
EXTRA_LD=""; [ -f "$PREFIX/cuda_extra_libs" ] && EXTRA_LD="$(cat "$PREFIX/cuda_extra_libs"):"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Debian's patch series installs pycaffe under lib/python3/dist-packages; find it wherever it is.
CAFFE_INIT="$(find "$PREFIX" -path '*/caffe/__init__.py' -not -path '*/test/*' | head -1)"
[ -n "$CAFFE_INIT" ] || fail "check" "no pycaffe (caffe/__init__.py) under $PREFIX"
CAFFE_PY="$(dirname "$(dirname "$CAFFE_INIT")")"
cat > "$ENV_FILE" <<EOF
# Generated by tools/setup.sh ($MODE_TAG) -- do not edit; rerun setup instead.  Use:  source tools/env.sh
export GCNET_ROOT="$REPO"
export CAFFE_ROOT="$PREFIX"
export CAFFE_BUILD="$MODE_TAG"
export VIRTUAL_ENV="$VENV"
export PATH="$PREFIX/bin:$VENV/bin:\$PATH"
export LD_LIBRARY_PATH="${EXTRA_LD}$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# caffe's python dir + python_layers/ + the project's python package + the venv: \`caffe train\` finds the Python layers.
export PYTHONPATH="$CAFFE_PY:$REPO/python_layers:$REPO:$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export GLOG_minloglevel="\${GLOG_minloglevel:-1}"
# where python_layers/gcnet_native.py keeps the Python layers' compiled C kernels (one file per source version)
export GCNET_KERNELS_DIR="\${GCNET_KERNELS_DIR:-$CACHE_ROOT/kernels}"
EOF
[ "$RUNTEST" = 0 ] || echo "export CAFFE_RUNTEST_DIR=\"$RT\"   # Caffe's unit tests of this build (--runtest)" >> "$ENV_FILE"
stage "checking: caffe --version, import caffe, Python layer registered"
# shellcheck disable=SC1090
( source "$ENV_FILE"
  caffe --version
  python -c "import caffe; assert 'Python' in caffe.layer_type_list(), 'Python layer missing'" ) \
  || fail "check" "Caffe was built but does not run; see the messages above"
if [ -f "$REPO/python_layers/gcnet_native.py" ]; then
  stage "the Python layers' C kernels (python_layers/*.c, one library per source version):"
  # shellcheck disable=SC1090
  ( source "$ENV_FILE"
    python -c "import gcnet_native
for path, new in gcnet_native.build_all(): print('  %s (%s)' % (path, 'built now' if new else 'cached'))" ) \
    || fail "check" "the Python layers' C kernels do not compile; see the messages above"
else   # the images run setup.sh before copying the project: the layers compile them at their first use
  stage "python_layers/ not here yet: its C kernels will compile at their first use (into $CACHE_ROOT/kernels)"
fi

# ---------------------------------------------------------------- 7. Caffe's own unit tests (--runtest)
# Built by tools/caffe_tests/CMakeLists.txt against the installed libcaffe (not a second copy of it), run from a
# patched source tree (the tests read src/caffe/test/test_data/...). Everything lives beside the build, under its key.
if [ "$RUNTEST" = 1 ]; then
  REPORT="$REPO/tools/caffe_runtest_report.sh"
  KNOWN="$REPO/tools/caffe_known_failures.txt"
  if [ -f "$RT/.complete" ]; then
    stage "Caffe test suite already run on this build ($(cat "$RT/run_info")); cached result from $RT/gtest.log"
  else
    RT_ALL="$CACHE_ROOT/runtest-$MODE_TAG-$KEY"          # the whole suite of this build holds every case
    if [ ! -x "$RT/build/test.testbin" ] && [ "$RT" != "$RT_ALL" ] && [ -x "$RT_ALL/build/test.testbin" ]; then
      stage "the whole suite's test binary of this build holds these cases: linking $RT_ALL"
      rm -rf "$RT"; mkdir -p "$RT/build"
      ln -s "$RT_ALL/build/test.testbin" "$RT/build/test.testbin"; ln -s "$RT_ALL/caffe" "$RT/caffe"
    fi
    if [ ! -x "$RT/build/test.testbin" ]; then
      fetch_source
      rm -rf "$RT"; mkdir -p "$RT/build"
      unpack_source "$RT/caffe"
      rm -f "$RT"/caffe_*.orig.tar.*          # dpkg-source -x leaves a copy of the upstream tarball beside the tree
      T_BUILD=$(date +%s)
      TEST_CMAKE=(-DCMAKE_BUILD_TYPE=Release "-DCaffe_DIR=$PREFIX/share/Caffe" "-DCAFFE_SRC=$RT/caffe"
        "-DCAFFE_TEST_CASES=${RUNTEST_CASES// /;}")
      if [ "$MODE" = cuda ]; then
        TEST_CMAKE+=("-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH_BIN// /;}" "-DCMAKE_CUDA_COMPILER=$(command -v nvcc)")
        [ -z "${CUDA_EXTRA_INC:-}" ] || TEST_CMAKE+=("-DCMAKE_CXX_FLAGS=-I${CUDA_EXTRA_INC//;/ -I}")
      fi
      stage "configuring Caffe's test suite against $PREFIX"
      run_logged "runtest (cmake configure of tools/caffe_tests)" runtest-cmake-$MODE_TAG \
        cmake -S "$REPO/tools/caffe_tests" -B "$RT/build" "${TEST_CMAKE[@]}"
      stage "compiling Caffe's test suite with $JOBS jobs (5-9 min on 2 cores); log: $LOGDIR/runtest-make-$MODE_TAG.log"
      make_progress "$LOGDIR/runtest-make-$MODE_TAG.log" "$RT/build" test.testbin
      echo "$(( $(date +%s) - T_BUILD ))" > "$RT/build_seconds"
      stage "test binary built in $(cat "$RT/build_seconds")s: $RT/build/test.testbin"
    fi
    if [ "$MODE" = cuda ] && ! { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }; then
      stage "CUDA test binary built ($RT/build/test.testbin); no GPU visible to nvidia-smi here, so not run."
      stage "Run it where a GPU is:  tools/setup.sh --cuda --runtest"
      stage "done ($MODE_TAG). Now:  source tools/env.sh"
      exit 0
    fi
    # A CPU build has only CPU tests (upstream filters *GPU* the same way); a CUDA build runs all of them.
    GTEST_ARGS=(--gtest_shuffle --gtest_random_seed=1)
    FILTER=""
    for c in $RUNTEST_CASES; do FILTER="${FILTER:+$FILTER:}$c.*:$c/*"; done
    [ "$MODE" = cuda ] || FILTER="$FILTER-*GPU*"
    [ -z "$FILTER" ] || GTEST_ARGS+=("--gtest_filter=$FILTER")
    T_RUN=$(date +%s)
    stage "running Caffe's test suite: test.testbin ${GTEST_ARGS[*]} ($([ -n "$RUNTEST_CASES" ] && echo "the cases named" || echo "all CPU tests: 1076 with patches 0001-0012, about 1 min on 2 cores")); log: $RT/gtest.log.partial"
    set +e
    (
      # shellcheck disable=SC1090
      source "$ENV_FILE"
      cd "$RT/caffe" && GLOG_minloglevel=2 exec "$RT/build/test.testbin" "${GTEST_ARGS[@]}"
    ) >"$RT/gtest.log.partial" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null || break
      ok="$(grep -c '^\[       OK \]' "$RT/gtest.log.partial")"
      bad="$(grep -cE '^\[  FAILED  \] .*\([0-9]+ ms\)$' "$RT/gtest.log.partial")"
      stage "  running... $ok passed, $bad failed so far; now: $(grep '^\[ RUN      \]' "$RT/gtest.log.partial" | tail -1 | cut -c14-)"
    done
    wait "$pid"; rc=$?
    set -e
    if ! grep -qE '^\[==========\] [0-9]+ tests? from .* ran' "$RT/gtest.log.partial"; then
      tail -n 20 "$RT/gtest.log.partial" >&2
      fail "runtest" "the suite did not finish (exit $rc; crash?); last test started: $(grep '^\[ RUN      \]' "$RT/gtest.log.partial" | tail -1 | cut -c14-). Log: $RT/gtest.log.partial. Not cached: the next call reruns it."
    fi
    mv "$RT/gtest.log.partial" "$RT/gtest.log"
    echo "run $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - T_RUN ))s run, $(cat "$RT/build_seconds" 2>/dev/null || echo ?)s test build, $(nproc) cores, exit $rc" > "$RT/run_info"
    # keep the binary, the source tree and the log; the object files are not needed again
    rm -rf "$RT/build/CMakeFiles"
    touch "$RT/.complete"
    stage "suite finished: $(cat "$RT/run_info")"
  fi
  "$REPORT" "$RT/gtest.log" "$KNOWN" || fail "runtest" "Caffe's test suite has failures not listed in $KNOWN (log: $RT/gtest.log)"
fi
stage "done ($MODE_TAG). Now:  source tools/env.sh"
