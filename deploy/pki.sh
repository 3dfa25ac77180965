#!/usr/bin/env bash
# A small PKI for the cluster's mutual TLS (scheduler <-> agents) and the scheduler's API TLS,
# with openssl.
#
#   pki.sh init DIR                      create the cluster CA (DIR/ca.pem, DIR/ca.key)
#   pki.sh issue-scheduler DIR [SAN...]  the scheduler's mutual-TLS certificate DIR/scheduler.pem
#                                        + .key (CN=scheduler; server and client auth)
#   pki.sh issue-host DIR HOST [SAN...]  a hypervisor host's (CN=HOST; server and client auth);
#                                        refuses names reserved for the scheduler's identity
#   pki.sh issue DIR NAME [SAN...]       either of the two: NAME "scheduler" is the scheduler's,
#                                        any other a host's. SANs like DNS:host-a IP:127.0.0.1
#                                        (default: DNS:NAME); valid 825 days (or $DAYS)
#   pki.sh issue-server DIR NAME [SAN...]
#                                        the API server certificate of the scheduler's
#                                        client-facing listeners (gRPC API, HTTP): DIR/NAME.pem +
#                                        DIR/NAME.key, CN=NAME, extendedKeyUsage=serverAuth only,
#                                        keyUsage=digitalSignature,keyEncipherment; SANs like
#                                        DNS:sched.example.net IP:192.0.2.10 (bare names and
#                                        addresses work too; default: DNS:localhost IP:127.0.0.1)
#   pki.sh issue-expired DIR NAME        a certificate that expired yesterday (for tests)
#   pki.sh token                         print a new random API token (64 hex characters)
#
# Keys are EC P-256, created with mode 0600. Idempotent: existing files are kept.
set -euo pipefail

die() { echo "pki: $*" >&2; exit 1; }
need_ca() { [[ -f $1/ca.pem && -f $1/ca.key ]] || die "no CA in $1: run 'pki.sh init $1' first"; }

cmd_init() {
  local dir=$1
  mkdir -p "$dir"
  [[ -f $dir/ca.pem ]] && return 0
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key")
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "${DAYS:-3650}" \
    -subj "/CN=livemig cluster CA" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  echo "pki: created CA $dir/ca.pem"
}

# sign DIR NAME EXTENSIONS: a new key DIR/NAME.key and DIR/NAME.pem (CN=NAME) signed by the CA,
# with the given extension lines.
sign() {
  local dir=$1 name=$2 ext=$3
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key")
  openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "${DAYS:-825}" -sha256 -extfile "$dir/$name.ext" \
    -out "$dir/$name.pem" 2>/dev/null || { rm -f "$dir/$name.csr" "$dir/$name.ext" "$dir/$name.key"
    die "openssl could not sign $dir/$name.pem (extensions: $(tr '\n' ' ' <<<"$ext"))"; }
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# The mutual-TLS certificate of the scheduler (NAME "scheduler") or of a hypervisor host (CN = its
# hostname). Both sides serve and call (the scheduler serves the registry and calls the agents;
# an agent serves its steps and reports to the registry): serverAuth and clientAuth, keyUsage
# digitalSignature and keyEncipherment (libvirtd refuses a server certificate whose keyUsage
# lacks keyEncipherment, and the lab's libvirtd uses these certificates). `role` is "scheduler" or "host"; a host may not take a name reserved
# for the scheduler's identity (the agents' allow-lists name it: such a host could drive them).
RESERVED_HOST_NAMES=(scheduler livemig-scheduler api ca)
issue_mtls() {
  local role=$1 dir=$2 name=$3; shift 3
  need_ca "$dir"
  if [[ $role == host ]]; then
    local r
    for r in "${RESERVED_HOST_NAMES[@]}"; do
      [[ ${name,,} == "$r" ]] && die "'$name' is reserved (the scheduler's identity in the agents' allow-lists; a host certificate with it could drive every agent): name the host by its hostname, or issue the scheduler's certificate with: pki.sh issue-scheduler DIR"
    done
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || die "'$name' is not a host name"
  fi
  [[ -f $dir/$name.pem ]] && return 0
  local sans=("$@")
  ((${#sans[@]})) || sans=("DNS:$name")
  local san; san=$(IFS=,; echo "${sans[*]}")
  sign "$dir" "$name" "subjectAltName=$san
extendedKeyUsage=serverAuth,clientAuth
keyUsage=critical,digitalSignature,keyEncipherment
basicConstraints=critical,CA:FALSE"
  echo "pki: issued $dir/$name.pem ($role, CN=$name, $san)"
}

cmd_issue() {  # compatibility: "scheduler" is the scheduler's certificate, any other name a host's
  local dir=$1 name=$2; shift 2
  if [[ $name == scheduler ]]; then issue_mtls scheduler "$dir" scheduler "$@"; else issue_mtls host "$dir" "$name" "$@"; fi
}

# One SAN of issue-server: DNS:name or IP:address as given, or a bare address (IP:) or name (DNS:).
server_san() {
  local v=$1
  if [[ $v =~ ^(DNS|IP):. ]]; then echo "$v"
  elif [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || ($v == *:* && $v =~ ^[0-9A-Fa-f:.]+$) ]]; then echo "IP:$v"
  elif [[ $v =~ ^[A-Za-z0-9*][A-Za-z0-9.*-]*$ ]]; then echo "DNS:$v"
  else die "'$v' is not a SAN: use DNS:NAME or IP:ADDRESS (e.g. DNS:sched.example.net IP:192.0.2.10)"
  fi
}

cmd_issue_server() {
  local dir=$1 name=$2; shift 2
  need_ca "$dir"
  if [[ -f $dir/$name.pem ]]; then
    echo "pki: $dir/$name.pem exists, kept (delete $dir/$name.pem and $dir/$name.key to reissue)"
    return 0
  fi
  local args=("$@") sans=() a part
  ((${#args[@]})) || args=("DNS:localhost" "IP:127.0.0.1")
  for a in "${args[@]}"; do
    IFS=, read -ra parts <<<"$a"
    for part in "${parts[@]}"; do sans+=("$(server_san "$part")") || exit 1; done
  done
  ((${#sans[@]})) || die "no SAN given"
  local san; san=$(IFS=,; echo "${sans[*]}")
  sign "$dir" "$name" "subjectAltName=$san
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment
basicConstraints=critical,CA:FALSE"
  echo "pki: issued API server certificate $dir/$name.pem, key $dir/$name.key (CN=$name, $san, serverAuth)"
}

cmd_issue_expired() {
  local dir=$1 name=$2
  need_ca "$dir"
  local work; work=$(mktemp -d)
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key")
  openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$work/req.csr" 2>/dev/null
  mkdir -p "$work/newcerts"; : >"$work/index.txt"; echo 1000 >"$work/serial"
  cat >"$work/ca.cnf" <<EOT
[ca]
default_ca = d
[d]
dir = $work
database = $work/index.txt
new_certs_dir = $work/newcerts
serial = $work/serial
default_md = sha256
policy = p
copy_extensions = none
[p]
commonName = supplied
[ext]
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:$name
EOT
  openssl ca -batch -config "$work/ca.cnf" -cert "$dir/ca.pem" -keyfile "$dir/ca.key" \
    -in "$work/req.csr" -out "$dir/$name.pem" -extensions ext \
    -startdate "$(date -u -d '3 days ago' +%Y%m%d%H%M%SZ)" \
    -enddate "$(date -u -d '1 day ago' +%Y%m%d%H%M%SZ)" >/dev/null 2>&1 \
    || die "openssl ca failed for $name"
  rm -rf "$work"
  echo "pki: issued expired $dir/$name.pem"
}

case "${1:-}" in
  init) [[ $# -eq 2 ]] || die "usage: pki.sh init DIR"; cmd_init "$2" ;;
  issue) [[ $# -ge 3 ]] || die "usage: pki.sh issue DIR NAME [SAN...]"; shift; cmd_issue "$@" ;;
  issue-scheduler) [[ $# -ge 2 ]] || die "usage: pki.sh issue-scheduler DIR [SAN...]"; dir=$2; shift 2; issue_mtls scheduler "$dir" scheduler "$@" ;;
  issue-host) [[ $# -ge 3 ]] || die "usage: pki.sh issue-host DIR HOST [SAN...]"; shift; issue_mtls host "$@" ;;
  issue-server) [[ $# -ge 3 ]] || die "usage: pki.sh issue-server DIR NAME [SAN...]"; shift; cmd_issue_server "$@" ;;
  issue-expired) [[ $# -eq 3 ]] || die "usage: pki.sh issue-expired DIR NAME"; cmd_issue_expired "$2" "$3" ;;
  token) openssl rand -hex 32 ;;
  -h|--help|"") awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; [[ -n ${1:-} ]] ;;
  *) die "unknown command '$1'; try: pki.sh --help" ;;
esac
