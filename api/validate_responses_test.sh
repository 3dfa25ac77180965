#!/usr/bin/env bash
# The response validator itself: conforming answers pass; each deliberately wrong one is listed
# and fails the run.
set -euo pipefail
doc=api/openapi.json
v=api/validate_responses.py
tmp=${TEST_TMPDIR:-$(mktemp -d)}
mig='{"id":"6f1c1e0a-1b2c-4d3e-8f40-0123456789ab","number":"7","instance_uuid":"44444444-2222-4333-8444-555555555555","source_host":"host-a","status":"completed","step":"complete","requester":"ops","created_at":"2026-12-07T03:00:00Z","updated_at":"2026-12-07T03:00:01.250Z"}'
rec() {  # method path status body [content type]
  python3 -c 'import json,sys; print(json.dumps({"method":sys.argv[1],"path":sys.argv[2],"status":int(sys.argv[3]),"body":sys.argv[4],"content_type":sys.argv[5]}))' \
    "$1" "$2" "$3" "$4" "${5:-application/json}"
}
fail=0
expect_ok() {
  rec "$@" >"$tmp/ok.jsonl"
  if ! out=$(/usr/bin/python3 $v $doc "$tmp/ok.jsonl"); then
    echo "FAIL: should conform: $*"; echo "$out"; fail=1
  fi
}
expect_mismatch() {  # what-the-message-says, then the record
  local want=$1; shift
  rec "$@" >"$tmp/bad.jsonl"
  if out=$(/usr/bin/python3 $v $doc "$tmp/bad.jsonl"); then
    echo "FAIL: accepted a wrong answer: $*"; echo "$out"; fail=1
  elif ! grep -q -- "$want" <<<"$out"; then
    echo "FAIL: the mismatch does not say '$want': $*"; echo "$out"; fail=1
  fi
}
expect_ok GET /v1/migrations/1 200 "$mig"
expect_ok GET "/v1/migrations?limit=2" 200 "{\"migrations\":[$mig],\"next_marker\":\"\"}"
expect_ok GET /v1/migrations/check 404 '{"error":{"code":"NOT_FOUND","message":"x"}}'
expect_ok GET /nowhere 404 '{"error":{"code":"NOT_FOUND","message":"no such endpoint"}}'
expect_ok GET /metrics 200 '# HELP x' 'text/plain; version=0.0.4'
expect_ok GET /healthz 200 '{"status":"ok"}'
expect_mismatch "'id' is a required property" GET /v1/migrations/1 200 "${mig/\"id\":\"6f1c1e0a-1b2c-4d3e-8f40-0123456789ab\",/}"
expect_mismatch "is not one of" GET /v1/migrations/1 200 "${mig/\"completed\"/\"done\"}"
expect_mismatch "Additional properties" GET /v1/migrations/1 200 "${mig/\"number\"/\"colour\":\"red\",\"number\"}"
expect_mismatch "is not of type 'string'" GET /v1/migrations/1 200 "${mig/\"7\"/7}"
expect_mismatch "is not a 'uuid'" GET /v1/migrations/1 200 "${mig/6f1c1e0a-1b2c-4d3e-8f40-0123456789ab/nope}"
expect_mismatch "is not a 'date-time'" GET /v1/migrations/1 200 "${mig/2026-12-07T03:00:00Z/yesterday}"
expect_mismatch "at body.migrations\[0\]" GET /v1/migrations 200 "{\"migrations\":[{}],\"next_marker\":\"\"}"
expect_mismatch "status 418 is not documented" GET /v1/hosts 418 '{"error":{"code":"UNKNOWN","message":"x"}}'
expect_mismatch "lacks" GET /nowhere 200 '{}'
expect_mismatch "not JSON" GET /v1/hosts 200 '<html>'
expect_mismatch "content type 'text/html'" GET /v1/hosts 200 '<html>' text/html
expect_mismatch "'message' is a required property" GET /v1/hosts 401 '{"error":{"code":"UNAUTHENTICATED"}}'
# Several wrong answers in one run: every one is listed.
{ rec GET /v1/hosts/a 200 '{}'; rec GET /v1/instances 200 '[]'; rec GET /healthz 200 '{"status":"ok"}'; } >"$tmp/many.jsonl"
out=$(/usr/bin/python3 $v $doc "$tmp/many.jsonl" || true)
for want in "GET /v1/hosts/a -> 200" "GET /v1/instances -> 200" "mismatch(es) in 3 answers"; do
  if ! grep -qF "$want" <<<"$out" || grep -q "GET /healthz" <<<"$out"; then
    echo "FAIL: expected each wrong answer listed ('$want'), and only those:"; echo "$out"; fail=1
  fi
done
[[ $fail == 0 ]] && echo "validate_responses: all checks passed"
exit $fail
