# Shared set-up for scripts/*: idempotent installs of what Krill needs.
# Source it; it defines functions and changes nothing by itself.

KRILL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${KRILL_VENV:-$KRILL_ROOT/.venv}"

log() { printf '%s\n' "[krill] $*" >&2; }

# ensure_debs CMD:PACKAGE ...  installs PACKAGE when CMD is not on PATH.
ensure_debs() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/usr/bin/$cmd" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
    return 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# install_inputs_hash  hashes what an install builds from: pyproject.toml, setup.py and the C
# sources of the extension (an editable install compiles krill/_native/* only when installing).
install_inputs_hash() {
  (cd "$KRILL_ROOT" && cat pyproject.toml setup.py krill/_native/* 2>/dev/null) | sha256sum | cut -c1-16
}

# ensure_venv EXTRA  creates .venv and installs krill (editable) with [EXTRA] when
# pyproject.toml, setup.py or krill/_native/* changed since the last install, and refreshes
# the bytecode of krill/*.py.
ensure_venv() {
  local extra="${1:-}" spec="." stamp
  [ -n "$extra" ] && spec=".[$extra]"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.krill-installed-$(install_inputs_hash)-${extra:-base}"
  if [ ! -f "$stamp" ]; then
    log "installing krill into $VENV ($spec)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$KRILL_ROOT$([ -n "$extra" ] && echo "[$extra]")"
    rm -f "$VENV"/.krill-installed-*
    touch "$stamp"
  fi
  # Bytecode for the editable tree, refreshed where a source changed (a fraction of a second
  # when nothing did). Without it, a shell that sets PYTHONDONTWRITEBYTECODE (this CI's does)
  # compiles every krill module on every `krill` start: ~30 ms of a 0.9 s `krill delta
  # apply`, whose wall time decides when a delta beats a full pull. pip does this for a
  # non-editable install; the image runs compileall itself (Dockerfile).
  "$VENV/bin/python" -m compileall -q "$KRILL_ROOT/krill" >/dev/null \
    || log "could not write krill's bytecode (read-only tree?): every start compiles it"
}

# The real components tests, demo and benchmarks run against.
KRILL_DEBS=(
  docker-registry:docker-registry
  skopeo:skopeo
  containerd:containerd
  ctr:containerd
  redis-server:redis-server
  xdelta3:xdelta3
  bsdiff:bsdiff
  zstd:zstd
  casync:casync
  ip:iproute2
  tar:tar
  gzip:gzip
  tc:iproute2
  mmdebstrap:mmdebstrap  # scripts/build-image: the root filesystem
  umoci:umoci  # scripts/build-image: the OCI image layout
  runc:runc  # containerd's runtime (tests/test_image.py runs the image)
  iptables:iptables  # tests/test_agent_netns.py blocks a peer port to prove the unreachable warning
  faketime:faketime  # tests/test_faults_clock_skew.py runs nodes with their clocks hours off (libfaketime)
  go:golang-go  # builds the Go gzip oracle the gogzip tests compare against (tests/goflate)
)
