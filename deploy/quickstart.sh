#!/usr/bin/env bash
# The README's quickstart: installs what is missing, builds, starts a private PostgreSQL in a
# state directory and applies the live-migration schema, then shows what it did.
#
#   deploy/quickstart.sh          set up and start (safe to re-run)
#   deploy/quickstart.sh stop     stop everything it started and remove its state
#   deploy/quickstart.sh status   what runs
#
# State: $LIVEMIG_STATE_DIR (default /var/tmp/livemig-quickstart).
# Later stages (scheduler, two compute agents on the two-host libvirt lab, a real live
# migration) are added by the deploy issue; this version stops after the database.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE=${LIVEMIG_STATE_DIR:-/var/tmp/livemig-quickstart}
PG_DIR=$STATE/postgres
LOG=$STATE/logs

stage_no=0
stage() {
  stage_no=$((stage_no + 1))
  echo "==> [$stage_no] $*"
  stage_t0=$SECONDS
}
ok() { echo "    ok ($((SECONDS - stage_t0)) s)"; }
fail() { echo "quickstart: stage $stage_no failed: $*" >&2; exit 1; }

cmd_stop() {
  echo "==> stopping PostgreSQL and removing $STATE"
  bash deploy/pgctl.sh destroy "$PG_DIR"
  rm -rf "$STATE"
  echo "    stopped; nothing is left in $STATE"
}

cmd_status() {
  if [[ -f $PG_DIR/data/postmaster.pid ]] && kill -0 "$(head -1 "$PG_DIR/data/postmaster.pid")" 2>/dev/null; then
    echo "PostgreSQL: running (pid $(head -1 "$PG_DIR/data/postmaster.pid")), $(bash deploy/pgctl.sh conninfo "$PG_DIR")"
  else
    echo "PostgreSQL: not running"
  fi
}

case "${1:-start}" in
  stop) cmd_stop; exit 0 ;;
  status) cmd_status; exit 0 ;;
  start) ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "quickstart: unknown command '$1'; try --help" >&2; exit 2 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
  echo "quickstart: run as root (it installs packages and, in later stages, starts libvirt in network namespaces): sudo $0" >&2
  exit 1
fi
mkdir -p "$LOG"

stage "installing missing Debian packages (deploy/install-deps.sh)"
bash deploy/install-deps.sh >"$LOG/install.log" 2>&1 || fail "see $LOG/install.log"
tail -1 "$LOG/install.log" | sed 's/^/    /'
ok

stage "building (bazel build //...; the first build takes a few minutes)"
bazel build //... >"$LOG/build.log" 2>&1 || fail "the build failed; see $LOG/build.log"
ok

stage "starting PostgreSQL 15 in $PG_DIR (Unix socket only)"
DB=$(OWNER_PID=1 bash deploy/pgctl.sh start "$PG_DIR" --durable 2>"$LOG/pgctl.log" | tail -1) \
  || fail "see $LOG/pgctl.log and $PG_DIR/server.log"
echo "    $DB"
ok

stage "applying the live-migration schema"
./bazel-bin/db/livemig-dbctl --db "$DB" schema apply | sed 's/^/    /' || fail "schema apply failed"
ok

stage "checking the dashboard views"
psql -X -q "$DB" -c "SELECT hostname, enabled, memory_free_mib, instances FROM v_host_summary" \
  | sed 's/^/    /'
psql -X -q "$DB" -c "SELECT id, instance_uuid, status, step FROM v_migrations_in_flight" \
  | sed 's/^/    /'
ok

cat <<EOT

Done. PostgreSQL runs with the live-migration schema applied.
  connect:  psql "$DB"
  schema:   ./bazel-bin/db/livemig-dbctl --db "$DB" schema status
  stop:     deploy/quickstart.sh stop
(The scheduler, the compute agents and a real live migration join this quickstart in later
issues; see README.md.)
EOT
