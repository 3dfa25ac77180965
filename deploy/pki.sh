#!/usr/bin/env bash
# A small PKI for the cluster's mutual TLS (scheduler <-> agents), with openssl.
#
#   pki.sh init DIR                      create the cluster CA (DIR/ca.pem, DIR/ca.key)
#   pki.sh issue DIR NAME [SAN...]       issue DIR/NAME.pem + DIR/NAME.key, CN=NAME, signed by
#                                        the CA; SANs like DNS:host-a IP:127.0.0.1 (default:
#                                        DNS:NAME); valid 825 days (or $DAYS)
#   pki.sh issue-expired DIR NAME        a certificate that expired yesterday (for tests)
#   pki.sh token                         print a new random API token
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

cmd_issue() {
  local dir=$1 name=$2; shift 2
  need_ca "$dir"
  [[ -f $dir/$name.pem ]] && return 0
  local sans=("$@")
  ((${#sans[@]})) || sans=("DNS:$name")
  local san; san=$(IFS=,; echo "${sans[*]}")
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key")
  openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' \
    "$san" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "${DAYS:-825}" -sha256 -extfile "$dir/$name.ext" \
    -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
  echo "pki: issued $dir/$name.pem (CN=$name, $san)"
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
  issue-expired) [[ $# -eq 3 ]] || die "usage: pki.sh issue-expired DIR NAME"; cmd_issue_expired "$2" "$3" ;;
  token) openssl rand -hex 24 ;;
  -h|--help|"") sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; [[ -n ${1:-} ]] ;;
  *) die "unknown command '$1'; try: pki.sh --help" ;;
esac
