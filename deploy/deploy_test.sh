#!/usr/bin/env bash
# Checks the production deployment material in deploy/ against the real binaries:
#
#   (a) deploy/k8s: every manifest parses as YAML and holds the objects it should; every
#       container command names a binary of the build (and of the image's Dockerfile) and every
#       --flag in its args is one that binary accepts, with a value when it takes one; the
#       ConfigMaps' config files are accepted by their binaries; names referenced between
#       objects (ConfigMaps, Secrets, volumes, ports, env) exist; the image's runtime packages
#       cover the libraries the binaries link.
#   (b) deploy/systemd: both units pass `systemd-analyze verify` with ExecStart pointed at the
#       built binaries and score at most 3 ("OK") in `systemd-analyze security --offline`
#       (structural checks only, said so, when systemd-analyze is missing), carry the hardening
#       options, and run the binaries with flags they accept.
#   (c) deploy/config: every key (also the commented-out ones) is an option of its binary,
#       `<binary> --config FILE --help` exits 0 (the values convert and validate: CLI11 parses
#       the file before it honours --help, but ignores unknown keys, hence the key check), and
#       each binary really starts from its example with only the host-specific paths overridden
#       on the command line: the agent with the fake driver, the scheduler on a throwaway
#       PostgreSQL, answering /healthz and reloading on SIGHUP; the agent's exit statuses the
#       units' RestartPreventExitStatus=2 relies on (2: configuration, 7: no Xen libvirtd).
#       deploy/pki.sh's certificates carry the usages their listeners need: `issue` server and
#       client authentication (mutual TLS), `issue-server` server authentication only with the
#       SANs given (the scheduler's API certificate); `token` makes 64 hex characters. The
#       examples' placeholder credentials (each token line of the example Secret livemig-tokens,
#       the config's token syntax line filled in, the example Secret livemig-db's password) end
#       the real scheduler at start-up with exit 2 and a message naming the placeholder.
#   (d) deploy/postgres/setup-database.sh on a throwaway PostgreSQL (deploy/pgctl.sh): creates
#       the roles and database, again without error, refuses clearly when it cannot connect; the
#       scheduler applies its schema as the owner role; the dashboard role can SELECT the views
#       (also a view created later) and cannot INSERT, UPDATE or CREATE.
#
# Prints one PASS/FAIL line per check and last `deploy checks: N passed, M failed`; exits 1 when
# anything failed. Runs under `bazel test //deploy:deploy_test` (binaries from the runfiles) or
# directly after a build (binaries from bazel-bin/, or DEPLOY_TEST_BINROOT=<bazel-out/.../bin>).
# Needs python3-yaml, psql and PostgreSQL 15 (deploy/install-deps.sh); kubectl is optional.
# DEPLOY_TEST_SYSTEMD_ANALYZE= (empty) exercises the fallback for machines without systemd.
set -uo pipefail

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS  $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL  $1"; [[ -z ${2:-} ]] || sed 's/^/      | /' <<<"$2"; }
section() { echo; echo "== $*"; }
summary() { echo; echo "deploy checks: $PASSED passed, $FAILED failed"; }

# --- Where things are ---------------------------------------------------------------------------
if [[ -n ${TEST_SRCDIR:-} && -f deploy/deploy_test.sh ]]; then
  ROOT=$PWD                    # Bazel runfiles: the workspace's files and the built binaries
  BINROOT=$PWD
else
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  BINROOT=${DEPLOY_TEST_BINROOT:-$ROOT/bazel-bin}   # or another output tree
fi
declare -A BIN=(
  [scheduler]=$(readlink -f "$BINROOT/scheduler/scheduler")
  [compute_agent]=$(readlink -f "$BINROOT/compute/compute_agent")
  [livemig-dbctl]=$(readlink -f "$BINROOT/db/livemig-dbctl")
)
D=$ROOT/deploy
for b in "${!BIN[@]}"; do
  [[ -x ${BIN[$b]} ]] || { echo "deploy_test: binary $b not found (${BIN[$b]}): build it first" >&2
    FAILED=1; summary; exit 1; }
done

TMP=$(mktemp -d /tmp/lm-deploy-XXXXXX)   # short: Unix socket paths stay under 108 bytes
PIDS=()
PGDIR=$TMP/pg
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [[ -d $PGDIR ]] && bash "$D/pgctl.sh" destroy "$PGDIR" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT

wait_for_log() { # FILE PATTERN SECONDS PID
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || { grep -qE "$2" "$1" 2>/dev/null; return; }
    sleep 0.1
  done
  return 1
}

# --- (a), (b) structure, (c) keys: one Python pass over the files ------------------------------
section "static checks (Python): manifests, units, example configs, image"
command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null \
  || { fail "python3 with yaml (python3-yaml) is available"; summary; exit 1; }
SYSTEMD_ANALYZE=${DEPLOY_TEST_SYSTEMD_ANALYZE-$(command -v systemd-analyze || true)}
py_out=$(ROOT=$ROOT D=$D BIN_SCHEDULER=${BIN[scheduler]} BIN_AGENT=${BIN[compute_agent]} \
  BIN_DBCTL=${BIN[livemig-dbctl]} python3 - <<'PY' 2>&1
import glob, os, re, subprocess, sys, tempfile
import yaml

D = os.environ["D"]
BINS = {"scheduler": os.environ["BIN_SCHEDULER"], "compute_agent": os.environ["BIN_AGENT"],
        "livemig-dbctl": os.environ["BIN_DBCTL"]}

def out(ok, what, detail=""):
    print(("PASS " if ok else "FAIL ") + what)
    if detail and not ok:
        for line in str(detail).splitlines():
            print("DETAIL " + line)

_help = {}
def options(binary):
    """{'--flag': takes_value} from the binary's --help (CLI11 format)."""
    if binary not in _help:
        text = subprocess.run([BINS[binary], "--help"], capture_output=True, text=True,
                              timeout=30).stdout
        opts = {}
        for line in text.splitlines():
            # "  --name TYPE[=default]   description": the type follows after one space.
            m = re.match(r"^\s+(-[\w-]+(?:,-[\w-]+)*)(?: (\S+))?", line)
            if not m:
                continue
            takes = bool(m.group(2)) and re.match(r"^(TEXT|INT|UINT|FLOAT)\b", m.group(2)) is not None
            for name in m.group(1).split(","):
                opts[name] = takes
        # --config takes a file name though CLI11 prints no type for it
        if "--config" in opts:
            opts["--config"] = True
        _help[binary] = opts
    return _help[binary]

def check_args(where, binary, args, env_names=()):
    opts = options(binary)
    i, bad = 0, []
    while i < len(args):
        a = str(args[i])
        for var in re.findall(r"\$\((\w+)\)", a):
            if var not in env_names:
                bad.append(f"{a}: $({var}) is not an env var of the container")
        if a.startswith("-"):
            name, eq, _ = a.partition("=")
            if name not in opts:
                bad.append(f"{name} is not an option of {binary}")
            elif opts[name] and not eq:
                if i + 1 >= len(args) or str(args[i + 1]).startswith("--"):
                    bad.append(f"{name} needs a value")
                else:
                    i += 1
            elif not opts[name] and eq:
                bad.append(f"{name} is a flag and takes no value")
        else:
            bad.append(f"unexpected positional argument {a!r}")
        i += 1
    out(not bad, f"{where}: every flag in the args is accepted by {binary}", "\n".join(bad))

CONF_LINE = re.compile(r"^\s*(#\s*)?([a-z][a-z0-9-]*)\s*=\s*(.*)$")
def conf_keys(text):
    """Keys of a CLI11 config: set ones, and commented-out `# key = value` lines."""
    live, commented = [], []
    for line in text.splitlines():
        m = CONF_LINE.match(line)
        if m:
            (commented if m.group(1) else live).append(m.group(2))
    return live, commented

def check_conf(where, binary, text):
    opts = options(binary)
    live, commented = conf_keys(text)
    unknown = [k for k in live if "--" + k not in opts]
    out(live and not unknown, f"{where}: its {len(live)} keys are options of {binary}",
        "unknown: " + ", ".join(unknown))
    unknown = [k for k in commented if "--" + k not in opts]
    out(not unknown, f"{where}: its {len(commented)} commented-out keys are options of {binary}",
        "unknown: " + ", ".join(unknown))
    dup = sorted({k for k in live if live.count(k) > 1})
    out(not dup, f"{where}: no key is set twice", ", ".join(dup))
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
    r = subprocess.run([BINS[binary], "--config", f.name, "--help"], capture_output=True,
                       text=True, timeout=30)
    os.unlink(f.name)
    out(r.returncode == 0, f"{where}: `{binary} --config FILE --help` accepts the values",
        f"exit {r.returncode}: {r.stderr.strip()}")
    return dict(m.group(2, 3) for m in map(CONF_LINE.match, text.splitlines())
                if m and not m.group(1))

def unquote(v):
    v = v.strip()
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v

# ---------------------------------------------------------------- (c) example configs: keys
examples = {"scheduler.conf.example": "scheduler", "compute-agent-xen.conf.example": "compute_agent"}
example_values = {}
for name, binary in examples.items():
    path = os.path.join(D, "config", name)
    if not os.path.isfile(path):
        out(False, f"deploy/config/{name} exists")
        continue
    example_values[name] = check_conf(f"deploy/config/{name}", binary, open(path).read())
xen = {k: unquote(v) for k, v in example_values.get("compute-agent-xen.conf.example", {}).items()}
want = {"libvirt-uri": "xen:///system", "profile": "auto", "allow": "scheduler"}
out(all(xen.get(k) == v for k, v in want.items())
    and xen.get("migration-uri", "").startswith("xen+tls://")
    and xen.get("migration-uri", "").endswith("/system")
    and xen.get("no-tunnel", "false") == "false" and xen.get("reserved-mib", "").isdigit()
    and xen.get("instance-path", "").startswith("/")
    and all(xen.get(k, "").startswith("/etc/livemig/pki/") for k in ("tls-ca", "tls-cert", "tls-key")),
    "the Xen agent example: xen:///system, profile auto, xen+tls:// migration URI, tunnelled, "
    "a dom0 reserve, the instance path, the allow-list, TLS files in /etc/livemig/pki", str(xen))

# ---------------------------------------------------------------- (b) systemd units, structure
units = {"livemig-scheduler.service": "scheduler", "livemig-compute-agent.service": "compute_agent"}
common = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID",
}
def unit_dirs(path):
    d, sect = {}, None
    for raw in open(path):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sect = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        d.setdefault((sect, k.strip()), []).append(v.strip())
    return d
for name, binary in units.items():
    path = os.path.join(D, "systemd", name)
    if not os.path.isfile(path):
        out(False, f"deploy/systemd/{name} exists")
        continue
    u = unit_dirs(path)
    g = lambda k, s="Service": u.get((s, k), [])
    missing = [f"{k}={v}" for k, v in common.items() if v not in g(k)]
    if "@system-service" not in g("SystemCallFilter"):
        missing.append("SystemCallFilter=@system-service")
    if g("CapabilityBoundingSet") != [""]:
        missing.append("CapabilityBoundingSet= (empty)")
    if "network-online.target" not in " ".join(g("After", "Unit")).split():
        missing.append("After=network-online.target")
    if "network-online.target" not in " ".join(g("Wants", "Unit")).split():
        missing.append("Wants=network-online.target")
    if binary == "scheduler" and g("User") != ["livemig"]:
        missing.append("User=livemig")
    if binary == "compute_agent":
        if "libvirtd.service" not in " ".join(g("After", "Unit")).split():
            missing.append("After=libvirtd.service")
        rw = " ".join(g("ReadWritePaths")).replace("-/", "/").split()
        if xen.get("instance-path") not in rw:
            missing.append(f"ReadWritePaths={xen.get('instance-path')} (the example's instance-path)")
        if "/var/lib/" + " ".join(g("StateDirectory")) != xen.get("state-dir"):
            missing.append(f"StateDirectory= for the example's state-dir {xen.get('state-dir')}")
    out(not missing, f"deploy/systemd/{name}: hardening, restart, reload and ordering directives",
        "missing: " + ", ".join(missing))
    exec_start = g("ExecStart")
    argv = exec_start[0].split() if len(exec_start) == 1 else []
    ok = (len(argv) >= 3 and argv[0] == f"/usr/local/bin/{binary}" and binary in BINS
          and argv[1:3] == ["--config", f"/etc/livemig/{name.replace('livemig-', '').replace('.service', '')}.conf"])
    out(ok, f"deploy/systemd/{name}: ExecStart runs /usr/local/bin/{binary} --config /etc/livemig/<name>.conf",
        str(exec_start))
    if argv:
        check_args(f"deploy/systemd/{name}", binary, argv[1:])

# ---------------------------------------------------------------- (a) Kubernetes manifests
docs, ok_yaml = [], True
for path in sorted(glob.glob(os.path.join(D, "k8s", "*.yaml"))):
    rel = os.path.relpath(path, os.path.dirname(D))
    try:
        loaded = [x for x in yaml.safe_load_all(open(path)) if x is not None]
        out(bool(loaded), f"{rel} parses as YAML ({len(loaded)} objects)")
        docs += [(rel, x) for x in loaded]
    except yaml.YAMLError as e:
        out(False, f"{rel} parses as YAML", e)
        ok_yaml = False
objs = {}
for rel, x in docs:
    if x.get("kind") == "Kustomization":
        continue
    good = isinstance(x, dict) and x.get("apiVersion") and x.get("kind") and x.get("metadata", {}).get("name")
    if not good:
        out(False, f"{rel}: an object with apiVersion, kind and metadata.name", str(x)[:200])
        continue
    if x["kind"] != "Namespace" and x["metadata"].get("namespace") != "livemig":
        out(False, f"{rel}: {x['kind']}/{x['metadata']['name']} is in the namespace livemig")
    objs[(x["kind"], x["metadata"]["name"])] = (rel, x)
need = [("Namespace", "livemig"), ("Deployment", "livemig-scheduler"), ("Service", "livemig-scheduler"),
        ("DaemonSet", "livemig-compute-agent"), ("ConfigMap", "livemig-scheduler-config"),
        ("ConfigMap", "livemig-compute-agent-config"), ("Secret", "livemig-scheduler-tls"),
        ("Secret", "livemig-tokens"), ("Secret", "livemig-db")]
absent = [f"{k}/{n}" for k, n in need if (k, n) not in objs]
out(not absent, "deploy/k8s holds the namespace, scheduler Deployment and Service, agent DaemonSet, "
    "ConfigMaps and Secrets", "absent: " + ", ".join(absent))
kust = [x for _, x in docs if x.get("kind") == "Kustomization"]
if kust:
    res = kust[0].get("resources", [])
    gone = [r for r in res if not os.path.isfile(os.path.join(D, "k8s", r))]
    out(not gone, "deploy/k8s/kustomization.yaml lists existing files", ", ".join(gone))

def secret_keys(name):
    s = objs.get(("Secret", name), (None, {}))[1]
    return set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())
tls_keys = secret_keys("livemig-scheduler-tls")
out({"tls.crt", "tls.key", "ca.crt"} <= tls_keys, "Secret livemig-scheduler-tls has tls.crt, tls.key, ca.crt", str(tls_keys))

# ConfigMaps' config files, checked like the examples.
conf_of = {}
for (kind, name), (rel, x) in objs.items():
    if kind != "ConfigMap":
        continue
    for key, text in (x.get("data") or {}).items():
        binary = {"scheduler.conf": "scheduler", "compute-agent.conf": "compute_agent"}.get(key)
        if binary is None:
            out(False, f"{rel}: ConfigMap {name} key {key} is a known config file")
            continue
        conf_of[key] = {k: unquote(v) for k, v in check_conf(f"{rel}: ConfigMap {name} {key}", binary, text).items()}

def pod_checks(rel, kind, x):
    spec = x["spec"]
    tmpl = spec["template"]
    sel = spec.get("selector", {}).get("matchLabels", {})
    labels = tmpl.get("metadata", {}).get("labels", {})
    out(sel and all(labels.get(k) == v for k, v in sel.items()),
        f"{rel}: {kind} selector matches its Pod template's labels", f"{sel} vs {labels}")
    pod = tmpl["spec"]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod.get("containers", []):
        cmd = c.get("command") or []
        binary = os.path.basename(cmd[0]) if cmd else None
        out(len(cmd) == 1 and cmd[0] == f"/usr/local/bin/{binary}" and binary in BINS,
            f"{rel}: container {c['name']} runs a binary of the build ({cmd})")
        dockerfile = open(os.path.join(D, "k8s", "Dockerfile")).read()
        out(re.search(rf"^COPY .*\b{re.escape(binary or '?')}\b.* /usr/local/bin/", dockerfile, re.M) is not None,
            f"{rel}: the image's Dockerfile installs {binary} in /usr/local/bin")
        env = {e["name"]: e for e in c.get("env", [])}
        if binary in BINS:
            check_args(f"{rel}: container {c['name']}", binary, c.get("args", []), env.keys())
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                out(ref["key"] in secret_keys(ref["name"]),
                    f"{rel}: env {e['name']} comes from Secret {ref['name']} key {ref['key']}")
        mounts = c.get("volumeMounts", [])
        bad = [m["name"] for m in mounts if m["name"] not in vols]
        out(not bad, f"{rel}: container {c['name']}'s volumeMounts name defined volumes", ", ".join(bad))
        for m in mounts:
            v = vols.get(m["name"], {})
            if "configMap" in v and m.get("subPath"):
                cm = objs.get(("ConfigMap", v["configMap"]["name"]), (None, {}))[1]
                out(m["subPath"] in (cm.get("data") or {}),
                    f"{rel}: {m['mountPath']} is key {m['subPath']} of ConfigMap {v['configMap']['name']}")
            if "secret" in v:
                out(("Secret", v["secret"]["secretName"]) in objs,
                    f"{rel}: volume {v['name']} is the Secret {v['secret']['secretName']}")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            p = c.get(probe, {})
            port = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
            out(port in ports or isinstance(port, int), f"{rel}: {c['name']} {probe} uses a declared port ({port})")
        yield c, binary, ports, vols, env

sched_rel, sched = objs.get(("Deployment", "livemig-scheduler"), (None, None))
if sched:
    for c, binary, ports, vols, env in pod_checks(sched_rel, "Deployment", sched):
        conf = conf_of.get("scheduler.conf", {})
        http_port = int(conf.get("http-listen", ":0").rsplit(":", 1)[1])
        for probe in ("readinessProbe", "livenessProbe"):
            hg = c.get(probe, {}).get("httpGet", {})
            port = ports.get(hg.get("port"), hg.get("port"))
            out(hg.get("path") == "/healthz" and port == http_port,
                f"{sched_rel}: {probe} is httpGet /healthz on the http-listen port ({http_port})", str(hg))
        want_ports = {int(conf.get(k, ":0").rsplit(":", 1)[1]) for k in ("listen", "registry-listen", "http-listen")}
        out(want_ports == set(ports.values()), f"{sched_rel}: container ports are the config's listen ports",
            f"{sorted(ports.values())} vs {sorted(want_ports)}")
        out("LIVEMIG_DB" in env and "db" not in conf, f"{sched_rel}: the database connection string comes from a Secret (LIVEMIG_DB)")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        files = {conf.get("tls-ca"), conf.get("tls-cert"), conf.get("tls-key"), conf.get("tokens-file")}
        unmounted = [f for f in files if not f or os.path.dirname(f) not in mounts]
        out(not unmounted, f"{sched_rel}: the config's TLS and token files are on mounted Secrets", str(unmounted))
        files = [conf.get("api-tls-cert"), conf.get("api-tls-key")]
        loopback = all(str(conf.get(k, "")).startswith(("unix:", "127.", "localhost")) for k in ("listen", "http-listen"))
        out(loopback or (all(files) and all(os.path.dirname(f) in mounts for f in files)),
            f"{sched_rel}: the API listeners on network addresses have the API certificate from a mounted Secret", str(files))
    out(sched["spec"].get("replicas") == 2, f"{sched_rel}: 2 replicas")
    svc_rel, svc = objs.get(("Service", "livemig-scheduler"), (None, None))
    if svc:
        tmpl_labels = sched["spec"]["template"]["metadata"]["labels"]
        sel = svc["spec"].get("selector", {})
        out(sel and all(tmpl_labels.get(k) == v for k, v in sel.items()), f"{svc_rel}: Service selects the scheduler Pods")
        names = {p.get("name") for c in sched["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        bad = [p["targetPort"] for p in svc["spec"]["ports"] if isinstance(p["targetPort"], str) and p["targetPort"] not in names]
        out(not bad, f"{svc_rel}: Service targetPorts are named container ports", str(bad))

ag_rel, ag = objs.get(("DaemonSet", "livemig-compute-agent"), (None, None))
if ag:
    pod = ag["spec"]["template"]["spec"]
    out(pod.get("nodeSelector", {}).get("livemig/hypervisor") == "true" and pod.get("hostNetwork") is True,
        f"{ag_rel}: on livemig/hypervisor=true nodes, in the host's network")
    for c, binary, ports, vols, env in pod_checks(ag_rel, "DaemonSet", ag):
        sc = c.get("securityContext", {})
        out(not sc.get("privileged") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add")
            and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{ag_rel}: the agent is not privileged: no capabilities, no privilege escalation, seccomp RuntimeDefault", str(sc))
        host = {v["hostPath"]["path"] for v in vols.values() if "hostPath" in v}
        conf = conf_of.get("compute-agent.conf", {})
        out({"/var/run/libvirt", conf.get("instance-path")} <= host,
            f"{ag_rel}: hostPath /var/run/libvirt and the instance path {conf.get('instance-path')}", str(host))
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        files = [conf.get("tls-ca"), conf.get("tls-cert"), conf.get("tls-key")]
        out(all(f and os.path.dirname(f) in mounts for f in files) and conf.get("state-dir") in mounts
            and conf.get("instance-path") in mounts,
            f"{ag_rel}: the config's TLS files, state and instance directories are mounted")
        listen_port = int(conf.get("listen", ":0").rsplit(":", 1)[1])
        adv = [a for a in c.get("args", []) if str(a).startswith("--advertise-address")]
        out(set(ports.values()) == {listen_port} and adv and adv[0].endswith(f":{listen_port}"),
            f"{ag_rel}: container port and advertised address use the config's listen port {listen_port}")
        out("LIVEMIG_DB" not in env and "db" not in conf, f"{ag_rel}: no database credentials on the agents")

# ---------------------------------------------------------------- the image's runtime packages
dockerfile = open(os.path.join(D, "k8s", "Dockerfile")).read()
m = re.search(r"apt-get install[^\n]*((?:\n[^\n]*)*?)\n\s*&&", dockerfile)
pkgs = set(re.findall(r"\b(lib[\w.+-]+|ca-certificates)\b", m.group(0) if m else ""))
base = {"libc6", "libgcc-s1", "libstdc++6"}
missing = []
for binary, path in BINS.items():
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout)
    ldc = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for lib in needed:
        lm = re.search(rf"^\s*{re.escape(lib)} \(.*\) => (\S+)$", ldc, re.M)
        if not lm:
            missing.append(f"{binary}: {lib} not found by ldconfig")
            continue
        real = os.path.realpath(lm.group(1))
        pkg = None
        for cand in (real, real.replace("/usr/lib/", "/lib/", 1), lm.group(1)):
            r = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
            if r.returncode == 0:
                pkg = r.stdout.split(":")[0]
                break
        if pkg is None or (pkg not in pkgs and pkg not in base):
            missing.append(f"{binary}: {lib} ({pkg})")
out(pkgs and not missing, f"deploy/k8s/Dockerfile installs the packages of every library the binaries link ({len(pkgs)} packages)",
    "\n".join(sorted(set(missing))))
PY
)
py_rc=$?
while IFS= read -r line; do
  case $line in
    "PASS "*) pass "${line#PASS }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
    "DETAIL "*) echo "      | ${line#DETAIL }" ;;
    *) echo "      | $line" ;;
  esac
done <<<"$py_out"
((py_rc == 0)) || fail "the Python checks ran to the end (exit $py_rc)"

if command -v kubectl >/dev/null; then
  # A real copy: Bazel's runfiles are symlinks, which kustomize does not read.
  cp -rL "$D/k8s" "$TMP/k8s"
  if out=$(kubectl kustomize "$TMP/k8s" 2>&1 >/dev/null); then pass "kubectl kustomize deploy/k8s builds"
  else fail "kubectl kustomize deploy/k8s builds" "$out"; fi
else
  echo "SKIP  kubectl kustomize (kubectl not installed; the structural checks above still ran)"
fi

# --- (b) systemd-analyze verify --------------------------------------------------------------------
section "systemd units: systemd-analyze verify"
if [[ -n $SYSTEMD_ANALYZE ]]; then
  mkdir -p "$TMP/units"
  for unit in livemig-scheduler.service livemig-compute-agent.service; do
    # The same unit, with ExecStart on the binary from this build instead of /usr/local/bin.
    sed -e "s#^ExecStart=/usr/local/bin/scheduler #ExecStart=${BIN[scheduler]} #" \
      -e "s#^ExecStart=/usr/local/bin/compute_agent #ExecStart=${BIN[compute_agent]} #" \
      "$D/systemd/$unit" >"$TMP/units/$unit"
    if ! grep -q "^ExecStart=/usr/local/bin/" "$TMP/units/$unit" && grep -q "^ExecStart=/" "$TMP/units/$unit"; then
      out=$(cd "$TMP/units" && "$SYSTEMD_ANALYZE" verify --man=no "./$unit" 2>&1)
      rc=$?
      # verify exits 0 on unknown keys (it only warns): treat every warning as a failure.
      if ((rc == 0)) && ! grep -qiE "unknown|ignoring|invalid|failed|not executable|warning" <<<"$out"; then
        pass "systemd-analyze verify $unit (ExecStart=$(grep -m1 '^ExecStart=' "$TMP/units/$unit" | cut -d= -f2- | cut -d' ' -f1))"
      else
        fail "systemd-analyze verify $unit" "exit $rc: $out"
      fi
    else
      fail "ExecStart of $unit could be pointed at the built binary"
    fi
    # systemd's own score of the sandbox (0 = fully locked down, 10 = none; --threshold counts
    # tenths), computed from the file without a running manager.
    if out=$(cd "$TMP/units" && "$SYSTEMD_ANALYZE" security --offline=yes --threshold=30 --no-pager "./$unit" 2>&1); then
      pass "systemd-analyze security --offline: $unit $(grep -o 'exposure level.*: [0-9.]* [A-Z]*' <<<"$out" | sed 's/.*: //') (at most 3)"
    elif grep -q "exposure level" <<<"$out"; then
      fail "systemd-analyze security --offline: $unit at most 3" "$(grep -E '^✗|exposure level' <<<"$out")"
    else
      echo "SKIP  systemd-analyze security --offline (not supported here: $(head -1 <<<"$out"))"
    fi
  done
else
  echo "SKIP  systemd-analyze verify: systemd-analyze is not installed (Debian package systemd);"
  echo "      the structural checks of the units above still ran"
fi

# --- (c) the binaries start from their examples --------------------------------------------------
section "the example configs drive the real binaries"
bash "$D/pki.sh" init "$TMP/pki" >/dev/null && bash "$D/pki.sh" issue "$TMP/pki" scheduler >/dev/null \
  && bash "$D/pki.sh" issue "$TMP/pki" hv-a.example.net >/dev/null \
  || { fail "deploy/pki.sh issues the test certificates"; summary; exit 1; }
{ echo "# <token> <role> <name>"; echo "$(bash "$D/pki.sh" token) operator deploy-test"; } >"$TMP/tokens"

# The API server certificate of the scheduler's client-facing listeners (pki.sh issue-server):
# server authentication only, the SANs given (default localhost and 127.0.0.1), from the CA.
# ext_of FILE: the certificate's extendedKeyUsage and subjectAltName, one "<name>=<value>" line
# each ("Extended Key Usage=TLS Web Server Authentication").
ext_of() {
  openssl x509 -in "$1" -noout -ext extendedKeyUsage,subjectAltName 2>&1 \
    | awk '/^X509v3 / { k = $0; sub(/^X509v3 /, "", k); sub(/:.*$/, "", k); next }
           { sub(/^ +/, ""); sub(/ +$/, ""); print k "=" $0 }'
}
if out=$(bash "$D/pki.sh" issue-server "$TMP/pki" api-server 2>&1) && [[ -f $TMP/pki/api-server.key ]] \
  && ext=$(ext_of "$TMP/pki/api-server.pem") \
  && grep -qx "Extended Key Usage=TLS Web Server Authentication" <<<"$ext" \
  && grep -qx "Subject Alternative Name=DNS:localhost, IP Address:127.0.0.1" <<<"$ext" \
  && openssl x509 -in "$TMP/pki/api-server.pem" -noout -ext keyUsage 2>/dev/null | tr -s ' \n' ' ' \
    | grep -q "Key Usage: critical Digital Signature, Key Encipherment *$" \
  && openssl verify -CAfile "$TMP/pki/ca.pem" -purpose sslserver "$TMP/pki/api-server.pem" >/dev/null 2>&1 \
  && ! openssl verify -CAfile "$TMP/pki/ca.pem" -purpose sslclient "$TMP/pki/api-server.pem" >/dev/null 2>&1; then
  pass "pki.sh issue-server: serverAuth only, keyUsage digitalSignature+keyEncipherment, default SANs ($(tr '\n' ';' <<<"$ext"))"
else
  fail "pki.sh issue-server issues an API server certificate" "$out
${ext:-}"
fi
if out=$(bash "$D/pki.sh" issue-server "$TMP/pki" api-named DNS:sched.example.net IP:192.0.2.10 \
    sched-api.example.net,10.0.0.7 2>&1) && ext=$(ext_of "$TMP/pki/api-named.pem") \
  && grep -qx "Subject Alternative Name=DNS:sched.example.net, IP Address:192.0.2.10, DNS:sched-api.example.net, IP Address:10.0.0.7" <<<"$ext" \
  && grep -qx "Extended Key Usage=TLS Web Server Authentication" <<<"$ext"; then
  pass "pki.sh issue-server: the SANs of the command line ($(grep Alternative <<<"$ext"))"
else
  fail "pki.sh issue-server takes DNS and IP SANs" "$out
${ext:-}"
fi
if out=$(bash "$D/pki.sh" issue-server "$TMP/pki" api-bad "not a name" 2>&1); then
  fail "pki.sh issue-server refuses a malformed SAN" "$out"
elif grep -q "is not a SAN: use DNS:NAME or IP:ADDRESS" <<<"$out" && [[ ! -e $TMP/pki/api-bad.key ]]; then
  pass "pki.sh issue-server refuses a malformed SAN: $out"
else
  fail "pki.sh issue-server refuses a malformed SAN, leaving no key" "$out"
fi
if ext=$(ext_of "$TMP/pki/scheduler.pem") \
  && grep -qx "Extended Key Usage=TLS Web Server Authentication, TLS Web Client Authentication" <<<"$ext"; then
  pass "pki.sh issue still issues the mutual-TLS certificates (server and client auth)"
else
  fail "pki.sh issue still issues server+client certificates" "$ext"
fi
if ext=$(ext_of "$TMP/pki/hv-a.example.net.pem") \
  && openssl x509 -in "$TMP/pki/hv-a.example.net.pem" -noout -ext keyUsage 2>/dev/null | grep -q "Digital Signature, Key Encipherment" \
  && grep -qx "Extended Key Usage=TLS Web Server Authentication, TLS Web Client Authentication" <<<"$ext"; then
  pass "pki.sh issue: a host's certificate has keyUsage digitalSignature (+keyEncipherment, which libvirtd requires) and server+client auth"
else
  fail "pki.sh issue: a host's certificate has keyUsage digitalSignature and server+client auth" "$ext"
fi
for reserved in scheduler Scheduler api; do
  if out=$(bash "$D/pki.sh" issue-host "$TMP/pki" "$reserved" 2>&1); then
    fail "pki.sh issue-host refuses the reserved name '$reserved'" "$out"
  elif grep -q "is reserved" <<<"$out"; then
    pass "pki.sh issue-host refuses the reserved name '$reserved'"
  else
    fail "pki.sh issue-host refuses the reserved name '$reserved' saying why" "$out"
  fi
done
if out=$(bash "$D/pki.sh" init "$TMP/pki2" >/dev/null && bash "$D/pki.sh" issue-scheduler "$TMP/pki2" 2>&1) && [[ -f $TMP/pki2/scheduler.pem ]] \
    && openssl x509 -in "$TMP/pki2/scheduler.pem" -noout -subject | grep -q "CN *= *scheduler"; then
  pass "pki.sh issue-scheduler issues CN=scheduler"
else
  fail "pki.sh issue-scheduler issues CN=scheduler" "$out"
fi
# Every database connection string in the examples verifies the server's certificate and name.
weak=$(grep -RnoE "sslmode=[a-z-]+" "$D/k8s" "$D/config" "$D/postgres" 2>/dev/null | grep -v "sslmode=verify-full" || true)
if [[ -z $weak ]] && grep -RqE "sslmode=verify-full" "$D/k8s" "$D/config"; then
  pass "every example database connection uses sslmode=verify-full"
else
  fail "every example database connection uses sslmode=verify-full" "$weak"
fi
if tok=$(bash "$D/pki.sh" token) && [[ $tok =~ ^[0-9a-f]{64}$ ]]; then
  pass "pki.sh token: 64 hex characters (the scheduler refuses tokens under 32)"
else
  fail "pki.sh token prints 64 hex characters" "$tok"
fi

# The examples' placeholder credentials are refused at start-up by the real scheduler: each token
# line of the example Secret livemig-tokens (alone, and after a valid line), the token syntax line
# of scheduler.conf.example filled in as written, and the example Secret livemig-db's connection
# string (read from $LIVEMIG_DB as in Kubernetes). Each must end the scheduler with exit 2 (a
# configuration error, not restarted) and a message naming the placeholder, before it serves or
# connects anywhere (--db points at no database: a token that got through would end in exit 7).
# sched_refuses LABEL PATTERN [ENV=VALUE...] -- SCHEDULER_FLAGS...
sched_flags=(--listen "unix:$TMP/refuse-api.sock" --registry-listen "unix:$TMP/refuse-registry.sock"
  --http-listen "" --tls-ca "$TMP/pki/ca.pem" --tls-cert "$TMP/pki/scheduler.pem"
  --tls-key "$TMP/pki/scheduler.key")
sched_refuses() {
  local label=$1 pattern=$2 out rc envs=()
  shift 2
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  out=$(env "${envs[@]}" timeout 20 "${BIN[scheduler]}" "${sched_flags[@]}" "$@" 2>&1)
  rc=$?
  if ((rc == 2)) && grep -qE "$pattern" <<<"$out" && ! grep -q "serving the API" <<<"$out"; then
    pass "scheduler refuses $label at start-up (exit 2): $(grep -oE "$pattern.*" <<<"$out" | head -1 | cut -c1-160)"
  else
    fail "scheduler refuses $label at start-up (exit 2, naming it)" "exit $rc: $out"
  fi
}
# With the example config and a --db that reaches no database.
sched_refuses_tokens() { # LABEL PATTERN TOKENS_FILE
  sched_refuses "$1" "$2" -- --config "$D/config/scheduler.conf.example" \
    --db "host=$TMP/no-database port=5432 dbname=livemig user=livemig" --tokens-file "$3"
}
mapfile -t example_token_lines < <(python3 - "$D/k8s/secrets.example.yaml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("metadata", {}).get("name") == "livemig-tokens":
        for line in doc["stringData"]["tokens"].splitlines():
            if line.split("#")[0].strip():
                print(line.strip())
PY
)
example_db=$(python3 - "$D/k8s/secrets.example.yaml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("metadata", {}).get("name") == "livemig-db":
        print(doc["stringData"]["LIVEMIG_DB"])
PY
)
if ((${#example_token_lines[@]} >= 2)); then
  pass "the example Secret livemig-tokens holds ${#example_token_lines[@]} placeholder token lines"
else
  fail "the example Secret livemig-tokens holds its placeholder token lines" "${example_token_lines[*]}"
fi
valid_line="$(bash "$D/pki.sh" token) operator deploy-test-valid"
i=0
for line in "${example_token_lines[@]}"; do
  i=$((i + 1))
  tok=${line%% *}
  printf '%s\n' "$line" >"$TMP/tokens-placeholder-$i"
  sched_refuses_tokens "the example Secret's token '$tok' (line $i)" \
    "tokens-placeholder-$i:1: the token is the placeholder '$tok'" "$TMP/tokens-placeholder-$i"
  printf '%s\n%s\n' "$valid_line" "$line" >"$TMP/tokens-placeholder-$i-second"
  sched_refuses_tokens "the example Secret's token '$tok' after a valid token" \
    "tokens-placeholder-$i-second:2: the token is the placeholder '$tok'" \
    "$TMP/tokens-placeholder-$i-second"
done
syntax=$(grep -oE '"<token> <role> <name>"' "$D/config/scheduler.conf.example" | head -1 | tr -d '"')
if [[ -n $syntax ]]; then
  printf '%s\n' "${syntax/<role> <name>/operator ops}" >"$TMP/tokens-syntax"
  sched_refuses_tokens "the config example's token syntax '<token>' filled in" \
    "tokens-syntax:1: the token is the placeholder '<token>'" "$TMP/tokens-syntax"
else
  fail "scheduler.conf.example shows the token file's syntax '<token> <role> <name>'"
fi
printf 'short-but-not-a-placeholder operator ops\n' >"$TMP/tokens-short"
sched_refuses_tokens "a token under 32 characters" "tokens-short:1: token too short \(27 characters, at least 32\)" "$TMP/tokens-short"
if [[ $example_db == *password=* ]]; then
  # As the Deployment runs it: no --db, the connection string from $LIVEMIG_DB.
  sched_refuses "the example Secret livemig-db's password (from \$LIVEMIG_DB, as in Kubernetes)" \
    "password is the placeholder 'REPLACE'" LIVEMIG_DB="$example_db" -- --tokens-file "$TMP/tokens"
else
  fail "the example Secret livemig-db holds a connection string with a password" "$example_db"
fi

mkdir -p "$TMP/instances" "$TMP/fake"
"${BIN[compute_agent]}" --config "$D/config/compute-agent-xen.conf.example" \
  --driver fake --fake-state-dir "$TMP/fake" --hostname hv-a.example.net \
  --listen 127.0.0.1:0 --advertise-address 127.0.0.1:1 --scheduler "" \
  --state-dir "$TMP/agent-state" --instance-path "$TMP/instances" \
  --tls-ca "$TMP/pki/ca.pem" --tls-cert "$TMP/pki/hv-a.example.net.pem" \
  --tls-key "$TMP/pki/hv-a.example.net.key" >"$TMP/agent.log" 2>&1 &
agent_pid=$!
PIDS+=("$agent_pid")
if wait_for_log "$TMP/agent.log" "serving on .*allowed: scheduler\)" 20 "$agent_pid"; then
  pass "compute_agent starts from compute-agent-xen.conf.example (fake driver; allow-list 'scheduler' from the file)"
  kill -HUP "$agent_pid"
  if wait_for_log "$TMP/agent.log" "SIGHUP: allow-list reloaded \(scheduler\)" 10 "$agent_pid"; then
    pass "compute_agent reloads its allow-list on SIGHUP (ExecReload) and keeps running"
  else
    fail "compute_agent reloads its allow-list on SIGHUP" "$(tail -5 "$TMP/agent.log")"
  fi
else
  fail "compute_agent starts from compute-agent-xen.conf.example" "$(tail -5 "$TMP/agent.log")"
fi
kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null

# An allow-list file that cannot be read: at start-up a configuration error (exit 2); on SIGHUP the
# previous list stays, and the log says so (never a silently emptied list).
printf 'scheduler\nops-console\n' >"$TMP/allow"
agent_args=(--config "$D/config/compute-agent-xen.conf.example" --driver fake
  --fake-state-dir "$TMP/fake" --hostname hv-a.example.net --listen 127.0.0.1:0
  --advertise-address 127.0.0.1:1 --scheduler "" --state-dir "$TMP/agent-state2"
  --instance-path "$TMP/instances" --tls-ca "$TMP/pki/ca.pem"
  --tls-cert "$TMP/pki/hv-a.example.net.pem" --tls-key "$TMP/pki/hv-a.example.net.key")
out=$("${BIN[compute_agent]}" "${agent_args[@]}" --allow-file "$TMP/no-such-allow" 2>&1)
rc=$?
if ((rc == 2)) && grep -q "cannot read the allow-list file $TMP/no-such-allow" <<<"$out"; then
  pass "compute_agent with an unreadable --allow-file exits 2 and names the file"
else
  fail "compute_agent with an unreadable --allow-file exits 2 and names the file" "exit $rc: $out"
fi
"${BIN[compute_agent]}" "${agent_args[@]}" --allow-file "$TMP/allow" >"$TMP/agent2.log" 2>&1 &
agent_pid=$!
PIDS+=("$agent_pid")
if wait_for_log "$TMP/agent2.log" "serving on .*allowed: .*ops-console" 20 "$agent_pid"; then
  mv "$TMP/allow" "$TMP/allow.moved"
  kill -HUP "$agent_pid"
  if wait_for_log "$TMP/agent2.log" "SIGHUP: cannot read the allow-list file .*stays as it was \(.*ops-console" 10 "$agent_pid" \
      && kill -0 "$agent_pid" 2>/dev/null && ! grep -q "allow-list reloaded" "$TMP/agent2.log"; then
    pass "compute_agent keeps its allow-list when the file cannot be read on SIGHUP, and says so"
  else
    fail "compute_agent keeps its allow-list when the file cannot be read on SIGHUP" "$(tail -5 "$TMP/agent2.log")"
  fi
else
  fail "compute_agent starts with --allow-file" "$(tail -5 "$TMP/agent2.log")"
fi
kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null

# The exit statuses the units rely on (RestartPreventExitStatus=2): a configuration error exits 2
# (not restarted), an unreachable hypervisor 7 (restarted until libvirtd is up).
out=$("${BIN[compute_agent]}" --config "$D/config/compute-agent-xen.conf.example" --listen 127.0.0.1:0 2>&1)
rc=$?
if ((rc == 2)) && grep -q "cannot read TLS CA /etc/livemig/pki/ca.pem" <<<"$out"; then
  pass "compute_agent without its TLS files exits 2, a configuration error the unit does not restart"
else
  fail "compute_agent without its TLS files exits 2" "exit $rc: $out"
fi
timeout 15 "${BIN[compute_agent]}" --config "$D/config/compute-agent-xen.conf.example" \
  --listen 127.0.0.1:0 --state-dir "$TMP/agent-state" --tls-ca "$TMP/pki/ca.pem" \
  --tls-cert "$TMP/pki/hv-a.example.net.pem" --tls-key "$TMP/pki/hv-a.example.net.key" \
  >"$TMP/agent-xen.log" 2>&1
rc=$?
if ((rc == 7)) && grep -q "cannot connect to libvirt at xen:///system" "$TMP/agent-xen.log"; then
  pass "compute_agent on a host without Xen exits 7 (unreachable, restarted): it opens xen:///system from the example"
elif ((rc == 124)); then
  echo "SKIP  compute_agent kept running with xen:///system: this machine has a Xen libvirtd"
else
  fail "compute_agent without a Xen libvirtd exits 7 naming xen:///system" "exit $rc: $(cat "$TMP/agent-xen.log")"
fi

# --- (d) setup-database.sh on a throwaway PostgreSQL ----------------------------------------------
section "deploy/postgres/setup-database.sh on a throwaway PostgreSQL"
SETUP=$D/postgres/setup-database.sh
if ! ADMIN=$(OWNER_PID=$$ bash "$D/pgctl.sh" start "$PGDIR" --watch 2>"$TMP/pgctl.err" | tail -1) || [[ -z $ADMIN ]]; then
  fail "deploy/pgctl.sh starts a throwaway PostgreSQL" "$(cat "$TMP/pgctl.err")"
  summary; exit 1
fi
pass "deploy/pgctl.sh starts a throwaway PostgreSQL ($ADMIN)"
SOCK=$PGDIR/sock

if out=$(bash "$SETUP" --admin "host=$TMP/no-such-dir user=postgres dbname=postgres" 2>&1); then
  fail "setup-database.sh refuses when it cannot connect" "$out"
elif grep -q "cannot connect to PostgreSQL" <<<"$out"; then
  pass "setup-database.sh refuses clearly when it cannot connect (exit non-zero, says why)"
else
  fail "setup-database.sh says why it cannot connect" "$out"
fi

if out=$(LIVEMIG_OWNER_PASSWORD="o'wner\$pw" LIVEMIG_DASHBOARD_PASSWORD='dash pw' bash "$SETUP" --admin "$ADMIN" 2>&1) \
  && grep -q "created role livemig " <<<"$out" && grep -q "created role livemig_dashboard" <<<"$out" \
  && grep -q "created database livemig owned by livemig" <<<"$out"; then
  pass "setup-database.sh creates the owner role, the dashboard role and the database, and says so"
else
  fail "setup-database.sh creates the roles and the database" "$out"
fi
echo "$out" | sed 's/^/      > /'
if out=$(bash "$SETUP" --admin "$ADMIN" 2>&1) && grep -q "role livemig .*exists" <<<"$out" \
  && grep -q "database livemig exists" <<<"$out"; then
  pass "setup-database.sh run again: succeeds and keeps what exists"
else
  fail "setup-database.sh is idempotent" "$out"
fi

# The scheduler from its example config, as the owner role: it applies the schema itself.
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${BIN[scheduler]}" --config "$D/config/scheduler.conf.example" \
  --db "host=$SOCK port=5432 user=livemig dbname=livemig" \
  --listen "unix:$TMP/api.sock" --registry-listen "unix:$TMP/registry.sock" \
  --http-listen "127.0.0.1:$HTTP_PORT" --tls-ca "$TMP/pki/ca.pem" \
  --tls-cert "$TMP/pki/scheduler.pem" --tls-key "$TMP/pki/scheduler.key" \
  --api-tls-cert "$TMP/pki/api-server.pem" --api-tls-key "$TMP/pki/api-server.key" \
  --tokens-file "$TMP/tokens" >"$TMP/scheduler.log" 2>&1 &
sched_pid=$!
PIDS+=("$sched_pid")
if wait_for_log "$TMP/scheduler.log" "scheduler .* serving the API" 30 "$sched_pid"; then
  pass "scheduler starts from scheduler.conf.example as the owner role livemig (schema applied: $(grep -o 'database schema at version [0-9]*' "$TMP/scheduler.log"))"
else
  fail "scheduler starts from scheduler.conf.example as the owner role" "$(tail -5 "$TMP/scheduler.log")"
fi
# HTTPS with the API certificate issued above (pki.sh issue-server), trusted through the CA.
body=$(python3 - "https://127.0.0.1:$HTTP_PORT/healthz" "$TMP/pki/ca.pem" <<'PY' 2>&1
import ssl, sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5, context=ssl.create_default_context(cafile=sys.argv[2]))
    print(r.read().decode().strip(), r.status)
except urllib.error.HTTPError as e:
    print(e.read().decode().strip(), e.code)
PY
)
if [[ $body == *'"ok"'*' 200' ]]; then
  pass "GET /healthz (the Kubernetes probes' path) answers 200 without a token: $body"
else
  fail "GET /healthz answers 200" "$body"
fi
kill -HUP "$sched_pid" 2>/dev/null
if wait_for_log "$TMP/scheduler.log" "SIGHUP: tokens reloaded" 10 "$sched_pid" && kill -0 "$sched_pid" 2>/dev/null; then
  pass "scheduler reloads its tokens on SIGHUP (ExecReload) and keeps running"
else
  fail "scheduler reloads its tokens on SIGHUP" "$(tail -5 "$TMP/scheduler.log")"
fi
kill "$sched_pid" 2>/dev/null; wait "$sched_pid" 2>/dev/null

dash() { psql -X -q -tA -v ON_ERROR_STOP=1 "host=$SOCK port=5432 user=livemig_dashboard dbname=livemig" "$@" 2>&1; }
owner() { psql -X -q -tA -v ON_ERROR_STOP=1 "host=$SOCK port=5432 user=livemig dbname=livemig" "$@" 2>&1; }
for v in v_migrations_in_flight v_host_summary v_migration_history; do
  if out=$(dash -c "SELECT count(*) FROM $v"); then
    pass "livemig_dashboard can SELECT from $v ($out rows)"
  else
    fail "livemig_dashboard can SELECT from $v" "$out"
  fi
done
# Not only the read-only session default: the privileges themselves.
for stmt in "INSERT INTO migrations DEFAULT VALUES" "UPDATE hosts SET enabled = false" \
  "CREATE TABLE deploy_test_t (a int)"; do
  if out=$(dash -c "SET default_transaction_read_only = off" -c "$stmt"); then
    fail "livemig_dashboard cannot: $stmt" "$out"
  elif grep -q "permission denied" <<<"$out"; then
    pass "livemig_dashboard cannot: $stmt ($(grep -o 'permission denied.*' <<<"$out" | head -1))"
  else
    fail "livemig_dashboard is refused by privilege: $stmt" "$out"
  fi
done
if out=$(dash -c "INSERT INTO migrations DEFAULT VALUES") || ! grep -q "read-only transaction" <<<"$out"; then
  fail "livemig_dashboard sessions are read-only by default" "$out"
else
  pass "livemig_dashboard sessions are read-only by default"
fi
if out=$(owner -c "CREATE VIEW v_deploy_test_later AS SELECT 1 AS one") \
  && out=$(dash -c "SELECT one FROM v_deploy_test_later") && [[ $out == 1 ]]; then
  pass "a view the owner creates later is readable by livemig_dashboard (default privileges)"
else
  fail "default privileges cover a later view" "$out"
fi

summary
((FAILED == 0))
