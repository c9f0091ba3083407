#!/usr/bin/env bash
# Builds the project's image (Dockerfile, target cpu or cuda) and checks it by running commands inside it.
#
#   tools/docker_build.sh --variant cpu     # Caffe CPU_ONLY; checks: caffe --version, import caffe (+ Python
#                                           #   layer), the project's test suite (README's test command)
#   tools/docker_build.sh --variant cuda    # CUDA 11.8 from Debian non-free, sm_37 + sm_90; checks: caffe
#                                           #   --version, import caffe, sm_37/sm_90 code in libcaffe
#                                           #   (cuobjdump --list-elf), `caffe train` a few iterations in CPU mode
#
# Builder: `docker` when a daemon answers, else `buildah bud --isolation chroot --network host` (no daemon).
# Base image: debian:bookworm; when it is not present and cannot be pulled, it is made here from Debian's mirror
# with `debootstrap --variant=minbase bookworm` and shaped like the official image (deb822 sources in
# /etc/apt/sources.list.d/debian.sources, no /etc/apt/sources.list, empty apt lists).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VARIANT=""
TAG=""
BUILDER="${GCNET_BUILDER:-}"
CHECK=1
BASE_ONLY=0
HOST_CA=1
NO_CACHE=()
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="${GCNET_DOCKER_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/gcnet-docker}"
BUILD_ARGS=()

usage() {
  cat <<EOF
usage: tools/docker_build.sh --variant cpu|cuda [--tag NAME] [--builder docker|buildah] [--no-check]
                             [--base-only] [--no-host-ca] [--no-cache] [--build-arg K=V]... [--help]

Builds the Dockerfile's target <variant> as image gcnet:<variant> and runs checks inside it; exits non-zero
naming the step that failed.
  --variant cpu|cuda   cpu: CPU-only Caffe, then the project's test suite runs in the image;
                       cuda: CUDA 11.8 (Debian non-free), sm_37 + sm_90; needs no GPU to build or check
  --tag NAME           image name (default gcnet:<variant>)
  --builder B          docker or buildah (default: docker if its daemon answers, else buildah)
  --no-check           build only
  --no-cache           rebuild every layer (the base image is kept)
  --base-only          only pull or make the base image debian:bookworm
  --no-host-ca         do not copy this machine's local CA certificates (/usr/local/share/ca-certificates/*.crt)
                       into the image (they are copied by default: pip needs them where egress re-signs TLS)
  --build-arg K=V      passed to the build (e.g. CUDA_ARCH="86", RUNTEST=0)
Environment: DEBIAN_MIRROR (for a debootstrapped base, now $MIRROR), GCNET_DOCKER_WORK (logs and scratch, now
$WORK).
EOF
}

die() { echo "docker_build: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) [ $# -ge 2 ] || die "--variant needs cpu or cuda"; VARIANT="$2"; shift ;;
    --variant=*) VARIANT="${1#--variant=}" ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a name"; TAG="$2"; shift ;;
    --builder) [ $# -ge 2 ] || die "--builder needs docker or buildah"; BUILDER="$2"; shift ;;
    --build-arg) [ $# -ge 2 ] || die "--build-arg needs K=V"; BUILD_ARGS+=(--build-arg "$2"); shift ;;
    --no-check) CHECK=0 ;;
    --base-only) BASE_ONLY=1 ;;
    --no-host-ca) HOST_CA=0 ;;
    --no-cache) NO_CACHE=(--no-cache) ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case "$VARIANT" in
  cpu|cuda) ;;
  "") die "--variant cpu|cuda is required (see --help)" ;;
  *) die "unknown variant '$VARIANT': use cpu or cuda" ;;
esac
case "$BUILDER" in
  ""|docker|buildah) ;;
  *) die "unknown builder '$BUILDER': use docker or buildah" ;;
esac
TAG="${TAG:-gcnet:$VARIANT}"

mkdir -p "$WORK"
LOG="$WORK/build-$VARIANT.log"
: >"$LOG"
T0=$(date +%s)
stage() { printf '[docker_build %5ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
STEP=""
fail() { echo "docker_build: FAILED at step '$STEP'. $*" >&2; exit 1; }

# ---------------------------------------------------------------- builder
STEP="builder"
if [ -z "$BUILDER" ]; then
  if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then BUILDER=docker
  elif command -v buildah >/dev/null; then BUILDER=buildah
  else fail "no docker daemon answers and buildah is not installed (Debian: apt-get install buildah)"; fi
fi
if [ "$BUILDER" = docker ]; then
  timeout 20 docker info >/dev/null 2>&1 || fail "--builder docker, but no docker daemon answers"
else
  command -v buildah >/dev/null || fail "--builder buildah, but buildah is not installed (apt-get install buildah)"
fi
stage "builder: $BUILDER; image $TAG (target $VARIANT); log: $LOG"

have_image() {
  if [ "$BUILDER" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

# ---------------------------------------------------------------- base image debian:bookworm
STEP="base image"
BASE=debian:bookworm
if have_image "$BASE"; then
  stage "base image $BASE present"
else
  stage "pulling $BASE"
  if [ "$BUILDER" = docker ]; then timeout 300 docker pull "$BASE" >>"$LOG" 2>&1 || true
  else timeout 300 buildah pull "docker.io/library/$BASE" >>"$LOG" 2>&1 || true; fi
  if have_image "$BASE"; then
    stage "pulled $BASE"
  else
    command -v debootstrap >/dev/null || fail "$BASE cannot be pulled and debootstrap is not installed (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || fail "$BASE cannot be pulled; making it with debootstrap needs root"
    ROOTFS="$WORK/rootfs-bookworm"
    rm -rf "$ROOTFS"
    stage "$BASE cannot be pulled: making it with debootstrap --variant=minbase bookworm from $MIRROR (about 2 min)"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >>"$LOG" 2>&1 \
      || { tail -n 15 "$LOG" >&2; fail "debootstrap failed (no network to $MIRROR?); log: $LOG"; }
    # shape it like the official image: deb822 sources, no sources.list, no apt lists or cached debs
    rm -f "$ROOTFS/etc/apt/sources.list"
    cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${MIRROR%/}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/}-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log
    if [ "$BUILDER" = docker ]; then
      tar -C "$ROOTFS" -c . | docker import -c 'CMD ["bash"]' - "$BASE" >>"$LOG" 2>&1 || fail "docker import failed; log: $LOG"
    else
      ctr="$(buildah from scratch)"
      mnt="$(buildah mount "$ctr")"
      tar -C "$ROOTFS" -c . | tar -C "$mnt" -x || fail "copying the debootstrapped root into $ctr"
      buildah umount "$ctr" >/dev/null
      buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
      buildah commit --rm "$ctr" "$BASE" >>"$LOG" 2>&1 || fail "buildah commit of the base image failed; log: $LOG"
    fi
    rm -rf "$ROOTFS"
    stage "made $BASE from Debian's mirror"
  fi
fi

[ "$BASE_ONLY" = 0 ] || { stage "done (--base-only)"; exit 0; }

# ---------------------------------------------------------------- build
STEP="host CA certificates"
rm -f "$REPO"/tools/docker-ca/*.crt
if [ "$HOST_CA" = 1 ] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$REPO/tools/docker-ca/"
  stage "copying this machine's local CA certificates into the image: $(cd "$REPO/tools/docker-ca" && echo *.crt) (--no-host-ca: none)"
fi
STEP="build"
if [ "$BUILDER" = docker ]; then
  BUILD_CMD=(docker build "${NO_CACHE[@]}" --target "$VARIANT" -t "$TAG" "${BUILD_ARGS[@]}" "$REPO")
else
  BUILD_CMD=(buildah bud --isolation chroot --network host --layers "${NO_CACHE[@]}" --target "$VARIANT" -t "$TAG" "${BUILD_ARGS[@]}" "$REPO")
fi
stage "building: ${BUILD_CMD[*]}"
T_BUILD=$(date +%s)
set +e
"${BUILD_CMD[@]}" >>"$LOG" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null && sleep 1; done
  kill -0 "$pid" 2>/dev/null || break
  stage "  building... $(grep -E '^(STEP|#[0-9]+|\[setup)' "$LOG" | tail -1 | cut -c1-110)"
done
wait "$pid"; rc=$?
set -e
BUILD_S=$(( $(date +%s) - T_BUILD ))
[ "$rc" = 0 ] || { tail -n 30 "$LOG" >&2; fail "the image build exited $rc after ${BUILD_S}s; log: $LOG"; }
if [ "$BUILDER" = docker ]; then
  SIZE="$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
else
  SIZE="$(buildah inspect --type image -f '{{.Size}}' "$TAG" 2>/dev/null | awk '{printf "%.2f GB", $1/1e9}' || true)"
  [ -n "$SIZE" ] || SIZE="$(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | awk -v t="localhost/$TAG" '$1==t {print $2, $3}')"
fi
stage "built $TAG in ${BUILD_S}s; image size $SIZE"

[ "$CHECK" = 1 ] || { stage "done (--no-check)"; exit 0; }

# ---------------------------------------------------------------- checks inside the image
CTR=""
cleanup() { [ -z "$CTR" ] || buildah rm "$CTR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
if [ "$BUILDER" = buildah ]; then
  CTR="$(buildah from "$TAG")"
fi
# in_image STEP CMD: runs CMD with bash inside the image, with the Caffe environment (tools/env.sh) sourced.
in_image() {
  STEP="$1"; local cmd="set -o pipefail; cd /gcnet && source tools/env.sh && $2" rc=0 t=$(date +%s)
  stage "check: $STEP"
  echo "=== check: $STEP" >>"$LOG"
  if [ "$BUILDER" = docker ]; then
    docker run --rm --entrypoint bash "$TAG" -c "$cmd" 2>&1 | tee -a "$LOG" | tail -n "${TAIL:-5}" | sed 's/^/    /' || rc=$?
  else
    buildah run --isolation chroot "$CTR" -- bash -c "$cmd" 2>&1 | tee -a "$LOG" | tail -n "${TAIL:-5}" | sed 's/^/    /' || rc=$?
  fi
  [ "$rc" = 0 ] || fail "exit $rc; log: $LOG"
  stage "  ok ($(( $(date +%s) - t ))s)"
}

in_image "caffe --version" 'caffe --version'
in_image "import caffe, Python layer registered" \
  "python -c \"import caffe; assert 'Python' in caffe.layer_type_list(), 'no Python layer'; print('import caffe OK:', caffe.__file__, '- layers:', len(caffe.layer_type_list()))\""
if [ "$VARIANT" = cpu ]; then
  in_image "Caffe's unit tests (cached result of the image's setup.sh --runtest)" 'tools/setup.sh --no-apt --runtest | tail -n 4'
  TAIL=3 in_image "project test suite (README's test command)" 'python -m pytest -q tests'
else
  in_image "sm_37 and sm_90 code in libcaffe (cuobjdump --list-elf)" \
    'elf="$(cuobjdump --list-elf "$CAFFE_ROOT"/lib/libcaffe.so)"; for a in sm_37 sm_90; do n=$(grep -c "$a" <<<"$elf"); echo "$a: $n cubins"; [ "$n" -gt 0 ] || exit 1; done'
  in_image "caffe train, 5 iterations in CPU mode (no GPU needed)" '
d=$(mktemp -d) && cp tools/tiny_python_layer_net.prototxt "$d/net.prototxt" && cd "$d"
printf "net: \"net.prototxt\"\nbase_lr: 0.01\nlr_policy: \"fixed\"\nmax_iter: 5\ndisplay: 1\nsolver_mode: CPU\nsnapshot_after_train: false\n" > solver.prototxt
GLOG_minloglevel=0 GLOG_logtostderr=1 caffe train --solver solver.prototxt > train.log 2>&1; rc=$?
grep -E "Iteration [0-9]+, loss|Optimization Done" train.log; [ $rc = 0 ] && grep -q "Optimization Done" train.log'
fi
STEP="done"
stage "all checks passed: $TAG ($VARIANT), built in ${BUILD_S}s, $SIZE"
