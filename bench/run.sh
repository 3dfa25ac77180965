#!/usr/bin/env bash
# Builds the benchmarks optimized and runs them; prints every figure with its target and the
# machine it ran on. See bench/README.md.
#
#   bench/run.sh                       all five (the lab one only as root)
#   bench/run.sh --only scale,lab      some of them (overhead, throughput, scale, evacuation, lab)
#   bench/run.sh --quick               small sizes (development; the figures mean little)
#   bench/run.sh --wait-load 1.5       before each benchmark, wait for the 1-min load average < 1.5
#
# Figures go to stdout and bench/results/<date>/figures.txt; each benchmark's log (the
# scheduler's and agents' lines) to bench/results/<date>/<name>.log.
set -euo pipefail

cd "$(dirname "$0")/.."
only="overhead,throughput,scale,evacuation,lab"
quick=""
wait_load=""
while (($#)); do
  case $1 in
    --only) only=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --wait-load) wait_load=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

out=bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
figures=$out/figures.txt

echo "== building (bazel build -c opt --config=opt //bench/... //scheduler:scheduler //compute:compute_agent)"
t0=$(date +%s)
bazel build -c opt --config=opt //bench/... //scheduler:scheduler //compute:compute_agent \
  >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; echo "build failed: $out/build.log" >&2; exit 1; }
bin=$(bazel info -c opt --config=opt bazel-bin 2>/dev/null)
echo "   built in $(( $(date +%s) - t0 )) s; binaries in $bin"

# With --wait-load: before each benchmark, wait until the 1-min load average is below the limit
# (at most 30 min before the first, 10 min before the others: the previous benchmark's own load
# takes a few minutes to leave the average).
wait_for_load() {
  [[ -n $wait_load ]] || return 0
  local deadline=$(( $(date +%s) + $1 )) load
  while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$wait_load" 'BEGIN { exit !(l < m) }'; then return 0; fi
    if (( $(date +%s) > deadline )); then
      echo "   load average still $load: running anyway"; return 0
    fi
    echo "   load average $load >= $wait_load: waiting"
    sleep 20
  done
}
first_wait=1800

run() {
  local name=$1; shift
  wait_for_load "$first_wait"
  first_wait=600
  echo
  echo "######## $name ($(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  local t=$(date +%s) rc=0
  "$bin/bench/$name" "$@" 2>"$out/$name.log" || rc=$?
  echo "   ($name took $(( $(date +%s) - t )) s, exit status $rc; log: $out/$name.log)"
  return 0
}

{
  echo "livemig benchmarks, $(date '+%Y-%m-%d %H:%M:%S %Z'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  for b in ${only//,/ }; do
    case $b in
      overhead)
        if [[ -n $quick ]]; then run overhead --rounds 2 --per-round 20 --warmup 5 --count 20
        else run overhead; fi ;;
      throughput)
        if [[ -n $quick ]]; then run throughput --migrations 100 --runs 1
        else run throughput; fi ;;
      scale)
        if [[ -n $quick ]]; then run scale --hosts 1000 --migrations 10000 --rounds 2 --reps 5
        else run scale; fi ;;
      evacuation)
        if [[ -n $quick ]]; then run evacuation --instances 20 --duration-ms 200
        else run evacuation; fi ;;
      lab)
        run lab --scheduler-bin "$bin/scheduler/scheduler" --agent-bin "$bin/compute/compute_agent" ;;
      *) echo "unknown benchmark '$b'" ;;
    esac
  done
} 2>&1 | tee "$figures"
echo
echo "figures: $figures"
