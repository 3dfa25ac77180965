#!/usr/bin/env bash
# The committed api/openapi.json carries exactly the schemas generated from proto/.
set -euo pipefail
api/schema_gen --check api/openapi.json
echo "openapi.json: generated schemas up to date"
