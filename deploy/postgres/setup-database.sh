#!/usr/bin/env bash
# Creates the scheduler's PostgreSQL owner role and database, and a read-only role for dashboards.
# Idempotent: what exists is kept (and its grants made right); run it again after any change.
#
#   setup-database.sh [--admin CONNINFO] [--database NAME] [--owner ROLE] [--dashboard ROLE]
#
#   --admin CONNINFO   libpq connection string of a superuser (default: $LIVEMIG_PG_ADMIN, else
#                      libpq's environment — PGHOST, PGPORT, PGUSER (default postgres),
#                      PGPASSWORD — and dbname=postgres). E.g. "host=db.example.net user=postgres
#                      dbname=postgres sslmode=verify-full", or run it as the postgres OS user on the
#                      database host: sudo -u postgres deploy/postgres/setup-database.sh
#   --database NAME    the scheduler's database (default livemig)
#   --owner ROLE       the role the scheduler logs in as; it owns the database and its schema and
#                      applies the schema migrations at start-up (default livemig)
#   --dashboard ROLE   the read-only role for dashboards (default livemig_dashboard)
#
# Passwords (optional; without them the roles get none and pg_hba.conf must admit them another
# way, e.g. peer or cert): LIVEMIG_OWNER_PASSWORD, LIVEMIG_DASHBOARD_PASSWORD. They are sent to
# psql on its standard input, never on a command line.
#
# The dashboard role gets CONNECT on the database, USAGE on schema public, SELECT on everything
# in it now (the documented views v_migrations_in_flight, v_host_summary, v_migration_history,
# and the tables under them) and, through default privileges, SELECT on every table and view the
# owner creates later (PostgreSQL's default privileges do not tell views from tables). Its
# sessions are read-only (default_transaction_read_only) with a 30 s statement timeout.
#
# Prints each thing it created, changed or found; exits non-zero with the reason when it cannot
# connect or is not allowed to.
set -euo pipefail

ADMIN=${LIVEMIG_PG_ADMIN:-}
DB=livemig
OWNER=livemig
DASH=livemig_dashboard

die() { echo "setup-database: $*" >&2; exit 1; }
say() { echo "setup-database: $*"; }
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --admin) ADMIN=${2:?--admin needs a connection string}; shift 2 ;;
    --admin=*) ADMIN=${1#*=}; shift ;;
    --database) DB=${2:?--database needs a name}; shift 2 ;;
    --database=*) DB=${1#*=}; shift ;;
    --owner) OWNER=${2:?--owner needs a role name}; shift 2 ;;
    --owner=*) OWNER=${1#*=}; shift ;;
    --dashboard) DASH=${2:?--dashboard needs a role name}; shift 2 ;;
    --dashboard=*) DASH=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

# Names go into SQL as identifiers: allow only plain lower-case ones (no quoting needed).
for n in "$DB" "$OWNER" "$DASH"; do
  [[ $n =~ ^[a-z_][a-z0-9_]{0,62}$ ]] \
    || die "'$n' is not a plain lower-case SQL name (letters, digits, _; at most 63)"
done
[[ $OWNER != "$DASH" ]] || die "the owner and the dashboard role must differ"
command -v psql >/dev/null || die "psql not found: install postgresql-client (Debian: postgresql-client-15)"

if [[ -z $ADMIN ]]; then
  ADMIN="dbname=postgres"
  [[ -n ${PGUSER:-} ]] || ADMIN+=" user=postgres"
fi

# Runs the SQL on stdin in DBNAME (empty: the admin connection's database). SQL goes on stdin,
# never on argv; -X: no ~/.psqlrc; stop at the first error; unaligned values only.
psql_run() { # DBNAME
  local d=$1
  { if [[ -n $d ]]; then printf '\\connect %s\n' "$d"; fi; cat; } \
    | PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10} psql -X -q -tA -v ON_ERROR_STOP=1 -d "$ADMIN"
}
q() { printf '%s;\n' "$1" | psql_run ""; }     # in the admin database
qdb() { printf '%s;\n' "$1" | psql_run "$DB"; } # in the scheduler's database

# 1. Connect, and check the rights.
if ! who=$(q "SELECT current_user || ' on ' || coalesce(inet_server_addr()::text, 'the local socket') || ', PostgreSQL ' || current_setting('server_version')" 2>&1); then
  die "cannot connect to PostgreSQL as an administrator with \"$ADMIN\":
$who
Give a superuser's connection string with --admin (or LIVEMIG_PG_ADMIN / PGHOST, PGUSER,
PGPASSWORD), or run this as the postgres OS user on the database host."
fi
say "connected as $who"
rights=$(q "SELECT concat(rolsuper::int, rolcreaterole::int, rolcreatedb::int) FROM pg_roles WHERE rolname = current_user")
if [[ ${rights:0:1} != 1 ]]; then
  [[ $rights == ?11 ]] \
    || die "$(q 'SELECT current_user') may not create roles and databases (needs SUPERUSER, or CREATEROLE and CREATEDB)"
  say "note: not a superuser; continuing with CREATEROLE and CREATEDB"
fi

# 2. Roles.
ensure_role() { # NAME PASSWORD_ENV WHAT
  local role=$1 pwvar=$2 what=$3
  if [[ $(q "SELECT count(*) FROM pg_roles WHERE rolname = '$role'") == 1 ]]; then
    say "role $role ($what) exists"
  else
    q "CREATE ROLE $role LOGIN" >/dev/null
    say "created role $role ($what)"
  fi
  q "ALTER ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS" >/dev/null
  local pw=${!pwvar:-}
  if [[ -n $pw ]]; then
    # Dollar-quoted with a random tag, sent on stdin: no escaping issue, nothing on argv.
    local tag="pw$RANDOM$RANDOM"
    [[ $pw != *"\$$tag\$"* ]] || die "cannot quote the password in $pwvar"
    printf 'ALTER ROLE %s PASSWORD $%s$%s$%s$;\n' "$role" "$tag" "$pw" "$tag" | psql_run "" >/dev/null
    say "set the password of $role (from $pwvar)"
  fi
}
ensure_role "$OWNER" LIVEMIG_OWNER_PASSWORD "owner, the scheduler logs in as it"
ensure_role "$DASH" LIVEMIG_DASHBOARD_PASSWORD "read-only, for dashboards"
q "ALTER ROLE $DASH SET default_transaction_read_only = on" >/dev/null
q "ALTER ROLE $DASH SET statement_timeout = '30s'" >/dev/null
say "role $DASH: sessions read-only, statement_timeout 30s"

# 3. The database, owned by the owner role.
if [[ $(q "SELECT count(*) FROM pg_database WHERE datname = '$DB'") == 1 ]]; then
  cur=$(q "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$DB'")
  if [[ $cur == "$OWNER" ]]; then
    say "database $DB exists, owned by $OWNER"
  else
    q "ALTER DATABASE $DB OWNER TO $OWNER" >/dev/null
    say "database $DB exists; owner changed from $cur to $OWNER"
  fi
else
  q "CREATE DATABASE $DB OWNER $OWNER ENCODING 'UTF8' TEMPLATE template0" >/dev/null
  say "created database $DB owned by $OWNER"
fi
q "REVOKE ALL ON DATABASE $DB FROM PUBLIC" >/dev/null
q "GRANT CONNECT, TEMPORARY ON DATABASE $DB TO $OWNER" >/dev/null
q "GRANT CONNECT ON DATABASE $DB TO $DASH" >/dev/null
say "database $DB: CONNECT for $OWNER and $DASH only"

# 4. Inside the database: the owner owns schema public (the scheduler creates its tables there);
#    nobody else may create anything; the dashboard role reads.
psql_run "$DB" <<SQL >/dev/null
ALTER SCHEMA public OWNER TO $OWNER;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO $DASH;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO $DASH;
ALTER DEFAULT PRIVILEGES FOR ROLE $OWNER IN SCHEMA public GRANT SELECT ON TABLES TO $DASH;
SQL
say "schema public: owned by $OWNER; CREATE revoked from PUBLIC; USAGE for $DASH"
say "default privileges: SELECT for $DASH on every table and view $OWNER creates in public"

views=$(qdb "SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm') AND has_table_privilege('$DASH', c.oid, 'SELECT')")
tables=$(qdb "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')")
if [[ -n $views ]]; then
  say "SELECT for $DASH on the views now present: $views (and $tables tables)"
else
  say "no views yet: the scheduler creates them at its first start (as $OWNER), and $DASH may read them then"
fi

say "done. The scheduler's connection string: \"host=<this server> dbname=$DB user=$OWNER\" (+ password or passfile, sslmode)"
say "dashboards (e.g. Grafana): \"host=<this server> dbname=$DB user=$DASH\", read the v_* views"
