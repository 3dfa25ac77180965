#!/usr/bin/env bash
# Installs exactly the Debian 12 packages that the build, the tests and the quickstart need.
# Idempotent: checks what is present first (dpkg-query), so a machine that has everything
# spends about a second here. Needs root when something is missing.
#
# Usage: deploy/install-deps.sh [--check]
#   --check   only list what is missing; exit 1 if anything is.
set -euo pipefail

PACKAGES=(
  # build: Bazel 4.2.3 (brings its JDK), compiler, code generators
  bazel-bootstrap g++ pkg-config protobuf-compiler protobuf-compiler-grpc
  # libraries (headers + shared objects)
  libgrpc++-dev libprotobuf-dev libabsl-dev libpqxx-dev libpq-dev nlohmann-json3-dev
  libvirt-dev libxml2-dev libcli11-dev catch2
  # the scheduler's HTTP server (Boost.Beast and Asio, header-only); cpp-httplib for test clients
  libboost1.74-dev libcpp-httplib-dev
  # formatting check
  clang-format
  # fuzz targets (integration_tests/fuzz): clang with libFuzzer, ASan and UBSan runtimes
  clang libclang-rt-14-dev
  # PostgreSQL server for tests and the quickstart (started by hand, not as a service)
  postgresql-15
  # the two-host libvirt lab (QEMU under TCG in network namespaces); not libvirt-daemon-system
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
  binutils iproute2 util-linux procps
  # the nested Xen lab (integration_tests/xenlab): the dom0 image is built with debootstrap from
  # Debian's archive and booted under QEMU; ssh reaches each dom0 over a forwarded port, socat
  # carries each connection of a dom0's agent to the scheduler (QEMU guestfwd cmd:)
  debootstrap qemu-utils e2fsprogs cpio openssh-client gzip socat
  # its iSCSI target (the shared-volume tests: a LUN both dom0s log in to; xenlab.sh --volumes)
  tgt
  # PKI for mutual TLS
  openssl ca-certificates libssl-dev
  # headless browser for the dashboard test
  chromium
  # certutil: the dashboard test's Chromium trusts the test CA (deploy/pki.sh) through an NSS
  # database in its own HOME, as an operator's browser would
  libnss3-tools
  # the unchanged OpenStack client and SDK, run against the Compute API subset by the tests
  python3-openstackclient python3-openstacksdk
  # a private Prometheus scrapes the scheduler's /metrics in its test; promtool checks the text and
  # the example rules (deploy/prometheus/)
  prometheus
  # systemd-analyze verifies the production units in the deploy test (not used as init here)
  systemd python3-yaml
  # the REST tests validate every answer against api/openapi.json (api/validate_responses.py)
  python3-jsonschema
)

missing=()
for p in "${PACKAGES[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$st" == "installed" ]] || missing+=("$p")
done

# The pinned OpenAPI linter (//api:openapi_lint_test) from the npm registry, kept outside the
# tree; installed with npm (Node.js from nodejs/npm) when its cache directory lacks it.
# 1.34.20: runs on Debian 12's Node.js 18 (node >= 18.17; the 2.x line needs Node 20.19).
REDOCLY_VERSION=1.34.20
redocly_dir=/var/cache/livemig/npm/redocly-$REDOCLY_VERSION
command -v npm >/dev/null || missing+=(nodejs npm)
install_redocly() {
  [[ -x $redocly_dir/node_modules/.bin/redocly ]] && return 0
  echo "install-deps: installing @redocly/cli $REDOCLY_VERSION into $redocly_dir"
  rm -rf "$redocly_dir.tmp" && mkdir -p "$redocly_dir.tmp"
  npm install --prefix "$redocly_dir.tmp" --no-audit --no-fund --no-save \
    "@redocly/cli@$REDOCLY_VERSION" >"$redocly_dir.log" 2>&1 ||
    { echo "install-deps: npm install @redocly/cli failed; see $redocly_dir.log" >&2; return 1; }
  rm -rf "$redocly_dir" && mv "$redocly_dir.tmp" "$redocly_dir"
}

if [[ "${1:-}" == "--check" ]]; then
  [[ -x $redocly_dir/node_modules/.bin/redocly ]] || missing+=("@redocly/cli@$REDOCLY_VERSION (npm)")
  if ((${#missing[@]})); then echo "missing: ${missing[*]}"; exit 1; fi
  echo "all ${#PACKAGES[@]} packages present"; exit 0
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  if [[ -x $redocly_dir/node_modules/.bin/redocly ]]; then exit 0; fi
  [[ $(id -u) -eq 0 ]] || { echo "install-deps: run as root to install @redocly/cli" >&2; exit 1; }
  install_redocly
  exit
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run this script as root (sudo $0) to install them" >&2
  exit 1
fi

echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep Debian's maintainer scripts from starting services (no init system is assumed here);
# PostgreSQL and libvirtd are started by the project's own scripts in private directories.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
t0=$SECONDS
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done in $((SECONDS - t0)) s"
install_redocly
