#!/usr/bin/env bash
# Starts and stops a private PostgreSQL 15 server from Debian's postgresql-15, for the tests and
# the quickstart: data in a directory of its own, listening only on a Unix socket in that
# directory (no TCP port, so it cannot collide with anything), fsync off unless --durable.
# PGCTL_EXTRA_OPTS adds server settings for diagnosis, e.g.
# PGCTL_EXTRA_OPTS='-c shared_preload_libraries=pg_stat_statements'.
#
#   pgctl.sh start DIR [--durable] [--watch]
#                                    init (if needed) and start; prints the libpq connection
#                                    string on stdout as its last line. --watch: a detached
#                                    watcher destroys the server once its owner process is gone
#                                    (even when the owner was SIGKILLed)
#   pgctl.sh stop DIR                fast shutdown, waits; succeeds if nothing runs
#   pgctl.sh destroy DIR             stop, then remove DIR
#   pgctl.sh sweep PARENT PREFIX     destroy every PARENT/PREFIX* whose owner process is gone
#                                    (leftovers of a test that was killed)
#   pgctl.sh conninfo DIR            print the connection string
#
# initdb refuses to run as root, so as root the server runs as the unprivileged system user
# `livemig-pg` (created when missing). DIR/owner.pid names the process that owns the server
# (OWNER_PID env, default: the caller's parent); a sweep destroys servers whose owner is gone.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGUSER_OS=${PGUSER_OS:-livemig-pg}
PORT=5432  # only names the socket file: the server listens on no TCP address

die() { echo "pgctl: $*" >&2; exit 1; }

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u "$PGUSER_OS" -- "$@"
  else
    "$@"
  fi
}

ensure_user() {
  [[ $(id -u) -eq 0 ]] || return 0
  if ! id -u "$PGUSER_OS" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      "$PGUSER_OS" 2>/dev/null || id -u "$PGUSER_OS" >/dev/null \
      || die "cannot create the system user $PGUSER_OS (initdb refuses root)"
  fi
}

conninfo() { echo "host=$1/sock port=$PORT user=postgres dbname=postgres"; }

cmd_start() {
  local dir=$1; shift
  local durable="" watch=""
  for a in "$@"; do
    case $a in
      --durable) durable=--durable ;;
      --watch) watch=1 ;;
      *) die "unknown option '$a' for start" ;;
    esac
  done
  [[ -x $PGBIN/initdb ]] || die "$PGBIN/initdb not found: install postgresql-15 (deploy/install-deps.sh)"
  ensure_user
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/sock"
  echo "${OWNER_PID:-$PPID}" >"$dir/owner.pid"
  if [[ $(id -u) -eq 0 ]]; then
    chown "$PGUSER_OS" "$dir" "$dir/sock"
    # The server user must be able to reach DIR through its parents.
    local p=$dir
    while [[ $p != / ]]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
  fi
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    rm -rf "$dir/data"
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
      --no-instructions >"$dir/initdb.log" 2>&1 \
      || die "initdb failed; see $dir/initdb.log: $(tail -3 "$dir/initdb.log")"
  fi
  if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    conninfo "$dir"; return 0
  fi
  local opts="-c listen_addresses='' -k $dir/sock -p $PORT -c max_connections=300"
  opts+=" -c shared_buffers=64MB -c log_min_messages=warning"
  if [[ $durable != --durable ]]; then
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  # Extra server settings for diagnosis (e.g. "-c shared_preload_libraries=pg_stat_statements").
  opts+=" ${PGCTL_EXTRA_OPTS:-}"
  as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w -t 60 start \
    >/dev/null 2>&1 || die "PostgreSQL did not start; see $dir/server.log: $(tail -3 "$dir/server.log" 2>/dev/null)"
  if [[ -n $watch ]]; then
    local owner; owner=$(cat "$dir/owner.pid")
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -d "$2" ]]; do sleep 1; done; "$3" destroy "$2"' \
      watcher "$owner" "$dir" "$(cd "$(dirname "$0")" && pwd)/$(basename "$0")" \
      </dev/null >/dev/null 2>&1 &
  fi
  conninfo "$dir"
}

cmd_stop() {
  local dir=$1
  [[ -d $dir/data ]] || return 0
  if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  # A postmaster whose data dir was half removed: kill it by its recorded pid.
  if [[ -f $dir/data/postmaster.pid ]]; then
    local pid; pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
}

cmd_destroy() { cmd_stop "$1"; rm -rf "$1"; }

cmd_sweep() {
  local parent=$1 prefix=$2 d owner
  shopt -s nullglob
  for d in "$parent/$prefix"*; do
    [[ -d $d ]] || continue
    owner=$(cat "$d/owner.pid" 2>/dev/null || echo "")
    # No owner.pid yet: a server being created right now (its start writes it after mkdtemp).
    # Its name says its owner (PREFIX<pid>-XXXXXX, as testing/pg_server names it); a name that
    # does not is swept only once it is a minute old.
    if [[ -z $owner && ${d##*/} =~ -([0-9]+)-[^-/]+$ ]]; then owner=${BASH_REMATCH[1]}; fi
    if [[ -z $owner ]] && [[ -n $(find "$d" -maxdepth 0 -mmin -1 2>/dev/null) ]]; then continue; fi
    if [[ -z $owner ]] || ! kill -0 "$owner" 2>/dev/null; then
      echo "pgctl: sweeping leftover server $d (owner ${owner:-unknown} is gone)" >&2
      cmd_destroy "$d"
    fi
  done
}

case "${1:-}" in
  start) [[ $# -ge 2 ]] || die "usage: pgctl.sh start DIR [--durable] [--watch]"; shift; cmd_start "$@" ;;
  stop) [[ $# -eq 2 ]] || die "usage: pgctl.sh stop DIR"; cmd_stop "$2" ;;
  destroy) [[ $# -eq 2 ]] || die "usage: pgctl.sh destroy DIR"; cmd_destroy "$2" ;;
  sweep) [[ $# -eq 3 ]] || die "usage: pgctl.sh sweep PARENT PREFIX"; cmd_sweep "$2" "$3" ;;
  conninfo) [[ $# -eq 2 ]] || die "usage: pgctl.sh conninfo DIR"; conninfo "$2" ;;
  -h|--help|help|"") sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; [[ -n ${1:-} ]] ;;
  *) die "unknown command '$1'; try: pgctl.sh --help" ;;
esac
