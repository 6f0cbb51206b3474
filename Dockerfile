# Voxa's images, one target each:
#
#   voxa      (the default) every `voxa` subcommand: signaling, sfu, operator, client, token
#   stunnerd  STUNner's TURN dataplane, the StunnerGateway pods' image
#   redis     the managed Redis a VoiceServer with `redis.managed: true` runs
#
#   docker build -t ghcr.io/voxa-dev/voxa:0.1.0 .        anywhere: Python deps from PyPI
#   make images                                        all three, tagged with the package version
#
# `make images` also works with no registry at all: it passes Debian-built base images as BASE_IMAGE
# and REDIS_BASE_IMAGE, puts the Python wheels in build/wheels/ (then pip installs from there and
# nothing else) and the stunnerd binary in build/images/. BuildKit builds only the target asked for.
#
# The SFU's native data plane (sfu/dataplane/, the voxa_dataplane extension module) is a wheel too:
# `make images` builds it on the host (.ci/dataplane.sh, with the cached cargo output) into
# build/wheels/ and passes DATAPLANE=dataplane-prebuilt; a plain `docker build` compiles it in a Rust
# image (RUST_IMAGE) instead. Either way the voxa image holds no Rust toolchain.
#
# Every image runs as a non-root user (10001) and needs nothing writable but what the pod mounts:
# bytecode is compiled at build time, so a read-only root filesystem is fine.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG REDIS_BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-slim-bookworm
# dataplane-source (compile in RUST_IMAGE) or dataplane-prebuilt (the wheel in build/wheels/).
ARG DATAPLANE=dataplane-source

# ---------------------------------------------------------------------------------------------------
FROM scratch AS stunnerd
ARG VERSION=dev
ARG STUNNERD_VERSION=unknown
LABEL org.opencontainers.image.title="voxa-stunnerd" \
      org.opencontainers.image.description="STUNner's TURN dataplane (stunnerd ${STUNNERD_VERSION}) for Voxa's StunnerGateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="Voxa"
COPY build/images/stunnerd /usr/local/bin/stunnerd
ENV PATH=/usr/local/bin
USER 10001:10001
ENTRYPOINT ["stunnerd"]

# ---------------------------------------------------------------------------------------------------
FROM ${REDIS_BASE_IMAGE} AS redis
ARG VERSION=dev
LABEL org.opencontainers.image.title="voxa-redis" \
      org.opencontainers.image.description="Redis from Debian's packages, for the VoiceServer's managed Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.vendor="Voxa"
# The base made by `make images` already has redis-server; elsewhere apt installs it.
RUN command -v redis-server >/dev/null \
    || { apt-get update && apt-get install -y --no-install-recommends redis-server \
         && rm -rf /var/lib/apt/lists/*; }
WORKDIR /data
USER 10001:10001
EXPOSE 6379
ENTRYPOINT ["redis-server"]

# ---------------------------------------------------------------------------------------------------
# The voxa_dataplane wheel in /wheels, from one of these two stages (BuildKit builds only the one
# DATAPLANE names).
FROM ${RUST_IMAGE} AS dataplane-source
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY sfu/dataplane /src/sfu/dataplane
RUN set -eu; \
    python3 -m venv /opt/maturin; \
    /opt/maturin/bin/pip install -q "maturin>=1.7,<2"; \
    /opt/maturin/bin/maturin build --release --locked --manifest-path /src/sfu/dataplane/Cargo.toml \
        --out /wheels

FROM scratch AS dataplane-prebuilt
COPY build/wheels/voxa_dataplane-*.whl /wheels/

FROM ${DATAPLANE} AS dataplane

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY . /src
COPY --from=dataplane /wheels /wheels
# With build/wheels/ in the context pip uses it alone (an offline build); otherwise it uses PyPI.
RUN set -eu; \
    python3 -m venv /opt/voxa; \
    if [ -d /src/build/wheels ]; then set -- --no-index --find-links=/src/build/wheels; else set --; fi; \
    /opt/voxa/bin/pip install "$@" /src; \
    /opt/voxa/bin/pip install --no-index --no-deps /wheels/voxa_dataplane-*.whl; \
    /opt/voxa/bin/python -c "import voxa_dataplane"; \
    /opt/voxa/bin/pip uninstall -q -y setuptools pip; \
    find /opt/voxa -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
        ! -path '*/voxa/*' -exec rm -rf {} +; \
    /opt/voxa/bin/python -m compileall -q -j 0 /opt/voxa/lib >/dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS voxa
ARG VERSION=dev
LABEL org.opencontainers.image.title="voxa" \
      org.opencontainers.image.description="Voxa: Kubernetes-native voice and video infrastructure (signaling, SFU, operator, client)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Voxa"
COPY --from=build /opt/voxa /opt/voxa
# The official phoenix JS client signaling serves to its browser client (npm's phoenix package: run
# `npm ci` before building).
COPY node_modules/phoenix/priv/static/phoenix.mjs /opt/voxa/share/phoenix.mjs
# A name for uid 10001 (the pods' runAsUser): libraries look the user up (getpass, kopf's peering id).
RUN echo 'voxa:x:10001:10001:Voxa:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'voxa:x:10001:' >> /etc/group
ENV PATH=/opt/voxa/bin:$PATH \
    VOXA_PHOENIX_JS=/opt/voxa/share/phoenix.mjs \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["voxa"]
CMD ["--help"]
