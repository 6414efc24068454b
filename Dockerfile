# Krill's image for those who build with docker or BuildKit:
#
#   docker build -t krill:0.1.0 .
#
# The same layout as scripts/build-image (which needs no docker and is
# reproducible: docs/image.md): Debian bookworm's Python, a virtualenv at
# /opt/krill holding Krill's own wheel and its dependencies from PyPI, the user
# krill (65532) by default, entrypoint krill. Not built in Krill's CI (it has
# no docker); scripts/build-image and tests/test_image.py are what is tested.
ARG DEBIAN_IMAGE=debian:bookworm-slim

# Krill's wheel: its C extension (krill._goflate) needs a compiler, which stays
# in this stage.
FROM ${DEBIAN_IMAGE} AS wheel
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /tmp/build \
 && /tmp/build/bin/pip install --no-cache-dir --disable-pip-version-check --upgrade pip \
 && /tmp/build/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps \
      -w /wheels /src

FROM ${DEBIAN_IMAGE}
# libtorrent's wheel needs only libc, libm, libstdc++ and libgcc_s (all in the
# base image); ca-certificates for an https upstream registry.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/*
# Installed by file name: PyPI has an unrelated project called krill. (The
# wheel, a few hundred KB, stays in the COPY layer: plain docker build has no
# RUN --mount.)
COPY --from=wheel /wheels /tmp/wheels
RUN python3 -m venv /opt/krill \
 && /opt/krill/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
      /tmp/wheels/krill-*.whl \
 && /opt/krill/bin/pip freeze --all >/opt/krill/pip-freeze.txt \
 && rm -rf /tmp/wheels \
 && find /opt/krill /usr/lib/python3 /usr/lib/python3.11 -name __pycache__ -type d -prune \
      -exec rm -rf {} + \
 && PYTHONHASHSEED=0 python3 -m compileall -q -j1 --invalidation-mode unchecked-hash \
      /usr/lib/python3.11 /usr/lib/python3/dist-packages /opt/krill/lib/python3.11/site-packages \
 && echo 'krill:x:65532:65532:krill:/home/krill:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'krill:x:65532:' >>/etc/group \
 && install -d -o 65532 -g 65532 -m 0755 /home/krill /var/lib/krill \
 && /opt/krill/bin/krill --version
ENV PATH=/opt/krill/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title=krill
USER 65532:65532
WORKDIR /home/krill
ENTRYPOINT ["/opt/krill/bin/krill"]
