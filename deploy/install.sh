#!/usr/bin/env bash
# Installs the product's programs like a tool: cloudctl, scheduler, compute_agent and
# livemig-dbctl into PREFIX/bin, and cloudctl's bash completion into
# PREFIX/share/bash-completion/completions/cloudctl (where bash-completion looks for it under
# /usr and /usr/local). Builds them first (bazel build, the default configuration) unless --no-build.
#
#   deploy/install.sh [--prefix DIR] [--no-build] [--help]
#
# The default prefix is /usr/local (as root) or ~/.local (as another user). Reinstalling replaces
# the files in place (a running scheduler or agent keeps its old binary until restarted).
# Runtime libraries: the programs link Debian 12's gRPC, protobuf, libpqxx, Abseil, libvirt and
# OpenSSL packages; deploy/install-deps.sh installs them (the Dockerfile's list names the runtime
# ones alone). Uninstall: deploy/install.sh --prefix DIR --uninstall.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

prefix=""
build=1
uninstall=0
while (($#)); do
  case $1 in
    --prefix)
      [[ $# -ge 2 && -n $2 ]] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
      prefix=$2
      shift 2
      ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-build) build=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *)
      echo "install.sh: unknown argument '$1'" >&2
      echo "hint: deploy/install.sh --help shows the usage" >&2
      exit 2
      ;;
  esac
done
if [[ -z $prefix ]]; then
  if ((EUID == 0)); then prefix=/usr/local; else prefix=$HOME/.local; fi
fi
case $prefix in
  /*) ;;
  *) prefix=$(pwd)/$prefix ;;
esac

cd "$(dirname "$0")/.."
# label → installed name
targets=(//cloudctl:cloudctl //scheduler:scheduler //compute:compute_agent //db:livemig-dbctl)
names=(cloudctl scheduler compute_agent livemig-dbctl)
completion_dir=$prefix/share/bash-completion/completions

if ((uninstall)); then
  for n in "${names[@]}"; do rm -fv "$prefix/bin/$n"; done
  rm -fv "$completion_dir/cloudctl"
  exit 0
fi

if ((build)); then
  echo "==> building ${targets[*]}"
  bazel build "${targets[@]}" 2>&1 | tail -3
fi
bin=$(bazel info bazel-bin 2>/dev/null) || {
  echo "install.sh: 'bazel info bazel-bin' failed: is this the repository's checkout, with bazel?" >&2
  exit 1
}
srcs=("$bin/cloudctl/cloudctl" "$bin/scheduler/scheduler" "$bin/compute/compute_agent"
  "$bin/db/livemig-dbctl")
for f in "${srcs[@]}"; do
  [[ -x $f ]] || {
    echo "install.sh: $f is missing: build first (run without --no-build)" >&2
    exit 1
  }
done

echo "==> installing into $prefix"
install -d "$prefix/bin" "$completion_dir"
for i in "${!srcs[@]}"; do
  # Through a temporary name and a rename: a running copy of the old binary is not disturbed.
  install -m 0755 "${srcs[$i]}" "$prefix/bin/.${names[$i]}.new"
  mv -f "$prefix/bin/.${names[$i]}.new" "$prefix/bin/${names[$i]}"
  echo "    $prefix/bin/${names[$i]}"
done
"$prefix/bin/cloudctl" completion bash >"$completion_dir/cloudctl.new"
mv -f "$completion_dir/cloudctl.new" "$completion_dir/cloudctl"
echo "    $completion_dir/cloudctl (bash completion; new shells load it)"
for n in "${names[@]}"; do
  "$prefix/bin/$n" --help >/dev/null 2>&1 || {
    echo "install.sh: $prefix/bin/$n --help failed: a runtime library may be missing" \
      "(deploy/install-deps.sh installs them)" >&2
    exit 1
  }
done
case ":$PATH:" in
  *":$prefix/bin:"*) echo "==> done: try 'cloudctl --help'" ;;
  *) echo "==> done; $prefix/bin is not on your PATH: export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
