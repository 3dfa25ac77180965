#!/usr/bin/env bash
# Lints api/openapi.json with the pinned Redocly CLI (api/redocly.yaml: recommended-strict, every
# finding an error). deploy/install-deps.sh installs that CLI into its cache when missing.
set -euo pipefail
version=1.34.20  # the same pin as deploy/install-deps.sh (runs on Debian 12's Node.js 18)
redocly=${LIVEMIG_REDOCLY:-/var/cache/livemig/npm/redocly-$version/node_modules/.bin/redocly}
if [[ ! -x $redocly ]]; then
  echo "FAIL: the OpenAPI linter @redocly/cli $version is not installed at $redocly;" \
    "run deploy/install-deps.sh (as root) to install it" >&2
  exit 1
fi
export HOME=${TEST_TMPDIR:-$(mktemp -d)} REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
got=$("$redocly" --version)
if [[ $got != "$version" ]]; then
  echo "FAIL: $redocly is version $got, not the pinned $version" >&2
  exit 1
fi
"$redocly" lint --config api/redocly.yaml --format stylish api/openapi.json
echo "openapi.json: redocly $version lint passed"
