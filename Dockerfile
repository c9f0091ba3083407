# GPU image of the GCNet reproduction: BVLC Caffe 1.0 built with CUDA by the same tools/setup.sh.
#
# Debian 12 ships CUDA 11.8 (package nvidia-cuda-toolkit, section non-free): 11.8 is the one CUDA release that
# compiles for both a Tesla K80 (sm_37, the paper's GPU; dropped after 11.x) and Hopper (sm_90, added in 11.8).
# setup.sh --cuda picks "37 90" for nvcc 11.8 (override: --build-arg CUDA_ARCH="86").
#
#   docker build -t gcnet .
#   docker run --gpus all -v /path/to/CK+:/data/ck+:ro -v $PWD/results:/gcnet/results gcnet \
#       tools/run_folds.sh ck+ --data /data/ck+ --gpu 0
FROM debian:bookworm

ARG CUDA_ARCH=""
ENV DEBIAN_FRONTEND=noninteractive CAFFE_PREFIX=/opt/gcnet-caffe
RUN sed -i 's/^Components: main.*/Components: main contrib non-free non-free-firmware/' \
        /etc/apt/sources.list.d/debian.sources \
 && apt-get update \
 && apt-get install -y --no-install-recommends nvidia-cuda-toolkit nvidia-cuda-dev python3 python3-venv python3-dev \
        ca-certificates git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /gcnet
COPY . /gcnet
RUN tools/setup.sh --cuda ${CUDA_ARCH:+--cuda-arch "$CUDA_ARCH"} && rm -rf "$CAFFE_PREFIX/src" "$CAFFE_PREFIX/apt"
# every command runs with the Caffe environment
ENTRYPOINT ["bash", "-c", "source tools/env.sh && exec \"$@\"", "--"]
CMD ["tools/run_folds.sh", "--help"]
