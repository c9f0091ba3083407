# Images of the GCNet reproduction: BVLC Caffe 1.0 built by the same tools/setup.sh as on a workstation.
# Two targets (build and check both with tools/docker_build.sh --variant cpu|cuda; README has the numbers):
#
#   cpu   CPU_ONLY Caffe; the build also runs Caffe's own unit tests (setup.sh --runtest; RUNTEST=0 skips them)
#         docker build --target cpu -t gcnet:cpu .
#         docker run -v $PWD/results:/gcnet/results gcnet:cpu tools/run_folds.sh synthetic
#   cuda  CUDA 11.8 from Debian 12's non-free (nvidia-cuda-toolkit), the one CUDA release that compiles for both
#         a Tesla K80 (sm_37, the paper's GPU; dropped after 11.x) and Hopper (sm_90, added in 11.8).
#         setup.sh --cuda picks "37 90" for nvcc 11.8 (override: --build-arg CUDA_ARCH="86").
#         docker build --target cuda -t gcnet:cuda .
#         docker run --gpus all -v /path/to/CK+:/data/ck+:ro -v $PWD/results:/gcnet/results gcnet:cuda \
#             tools/run_folds.sh ck+ --data /data/ck+ --gpu 0
#
# Layer order: the shared base (Python, CA certificates, entry point), then setup.sh, patches/ and requirements
# (stage setup-files), then the Caffe build, then the rest of the project, so that changing project code does not
# rebuild Caffe.
ARG BASE=debian:bookworm

FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive CAFFE_PREFIX=/opt/gcnet-caffe LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Extra CA certificates (*.crt) in tools/docker-ca/: tools/docker_build.sh copies this machine's local CAs there
# (/usr/local/share/ca-certificates), for networks whose egress re-signs TLS (pip to PyPI fails otherwise).
COPY tools/docker-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /gcnet
ENTRYPOINT ["bash", "-c", "source tools/env.sh && exec \"$@\"", "--"]
CMD ["tools/run_folds.sh", "--help"]

# What tools/setup.sh needs to build Caffe and the Python environment; both targets copy it before their build, so
# that changing project code does not rebuild Caffe.
FROM scratch AS setup-files
COPY tools/setup.sh tools/caffe_runtest_report.sh tools/caffe_known_failures.txt /tools/
COPY tools/caffe_tests/ /tools/caffe_tests/
COPY patches/ /patches/
COPY requirements.txt requirements-face.txt /

# ------------------------------------------------------------------------------------------------ cpu
FROM base AS cpu
ARG RUNTEST=1
COPY --from=setup-files / ./
# setup.sh installs its apt build dependencies itself; the Caffe test tree (source + test binary) is dropped after
# the run, keeping its log, so `tools/setup.sh --runtest` in the container prints the cached result.
RUN tools/setup.sh $([ "$RUNTEST" = 1 ] && echo --runtest) \
 && rm -rf /var/lib/apt/lists/* /root/.cache/pip "$CAFFE_PREFIX/src" "$CAFFE_PREFIX/apt" \
 && for d in "$CAFFE_PREFIX"/runtest-*; do if [ -d "$d" ]; then rm -rf "$d/caffe" "$d/build"; fi; done
COPY . .

# ------------------------------------------------------------------------------------------------ cuda
FROM base AS cuda-toolkit
# nvcc 11.8 accepts GCC up to 11 as host compiler; bookworm's default is 12, so all of Caffe is built with gcc-11
# (one compiler for the C++ and CUDA objects; FindCUDA passes CMAKE_C_COMPILER to nvcc as -ccbin).
RUN sed -i 's/^Components: main.*/Components: main contrib non-free non-free-firmware/' \
        /etc/apt/sources.list.d/debian.sources \
 && apt-get update \
 && apt-get install -y --no-install-recommends nvidia-cuda-toolkit nvidia-cuda-dev gcc-11 g++-11 \
 && rm -rf /var/lib/apt/lists/*

FROM cuda-toolkit AS cuda
ARG CUDA_ARCH=""
ARG RUNTEST=0
ENV CC=gcc-11 CXX=g++-11 CUDAHOSTCXX=g++-11 CUDA_HOME=/usr
COPY --from=setup-files / ./
# RUNTEST=1 also builds the CUDA test binary (run later where a GPU is: tools/setup.sh --cuda --runtest).
RUN tools/setup.sh --cuda ${CUDA_ARCH:+--cuda-arch "$CUDA_ARCH"} $([ "$RUNTEST" = 1 ] && echo --runtest) \
 && rm -rf /var/lib/apt/lists/* /root/.cache/pip "$CAFFE_PREFIX/src" "$CAFFE_PREFIX/apt"
COPY . .
