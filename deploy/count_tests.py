#!/usr/bin/env python3
"""Counts the tests of one `bazel test` invocation from its build event file.

Usage: deploy/count_tests.py [options] BEP_JSON_FILE

BEP_JSON_FILE is what `bazel test --build_event_json_file=BEP_JSON_FILE ...` wrote. Each test
target's outcome is the one Bazel reported in that invocation (the testSummary event's
overallStatus; targetCompleted without success, or an `aborted` event, for a target that was not
built or not run). Only then is the target's own test.log read, at the path its testResult event
names, and only a log written during the invocation:

  - PASSED: the test's own summary gives the count of cases:
      Catch2  "All tests passed (N assertions in M test cases)"                  -> M passed
      Catch2 / shell tests  "test cases: N | P passed | F failed | S skipped"  -> P, F, S
      matrix tests  "CASES: <p> passed, <f> failed" (one line per matrix)      -> each such
               matrix test case of the Catch2 summary is replaced by its p cases (f are failed)
      only "SKIP: <reason>" lines and no summary                               -> 1 skipped
      no summary at all                                                        -> 1 passed
      Catch2 "No tests ran"                                                    -> 1 failed
  - FAILED, TIMEOUT, FLAKY, INCOMPLETE, NO_STATUS, not built, not run, a result taken from a
    cache, a missing or stale log: nothing passed; max(1, the failed test cases of the log's
    failure summary) failed.
  - A target that is not a test but did not build: 1 failed.
  - --bazel-exit RC not 0 while nothing above failed: 1 failed ("bazel test exited RC").

Prints one line per target, then "<what>: N passed, M failed, K skipped". Exits 0 when nothing
failed, 1 when something did, 2 on a usage error. deploy/run-tests.sh calls it once per
`bazel test` invocation and adds up the --totals files.
"""

import argparse
import json
import os
import re
import sys
import urllib.parse

EXIT_NAMES = {
    1: "build failed",
    2: "command line or environment problem",
    3: "tests failed",
    4: "no test targets",
    8: "interrupted",
    36: "local environment problem",
    37: "internal error",
}

RE_ALL_PASSED = re.compile(r"^All tests passed \((\d+) assertions? in (\d+) test cases?\)")
# Catch2 pads the numbers of its summary columns to one width and leaves out the columns that are
# 0 (test cases: 4 | 2 passed | 2 failed; v3: test cases: 3 | 2 passed | 1 skipped).
RE_TOTALS = re.compile(r"^test cases:\s*(\d+|- none -)\s*((?:\|\s*\d+ [a-z ]+?\s*)*)$")
RE_TOTALS_COLUMN = re.compile(r"\|\s*(\d+) ([a-z ]+?)\s*(?=\||$)")
RE_CASES = re.compile(r"^CASES: (\d+) passed, (\d+) failed\s*$")
RE_SKIP = re.compile(r"^SKIP: (.+?)\s*$")
RE_NO_TESTS = re.compile(r"^No tests ran\s*$")


class LogCount:
    """What one test.log says about its cases."""

    def __init__(self):
        self.summary = None  # "catch2", "totals", "cases", "skip", "no-tests" or None
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.skip_reasons = []


def read_log_counts(text):
    """Parses one test.log (see the module's doc)."""
    last = None  # (kind, passed, failed, skipped) of the last Catch2 or shell summary line
    cases = []  # (passed, failed) per matrix
    skips = []
    no_tests = False
    for line in text.splitlines():
        line = line.rstrip("\r")
        m = RE_ALL_PASSED.match(line)
        if m:
            last = ("catch2", int(m.group(2)), 0, 0)
            continue
        m = RE_TOTALS.match(line)
        if m:
            p = f = s = 0
            for n, what in RE_TOTALS_COLUMN.findall(m.group(2)):
                if what in ("passed", "failed as expected"):
                    p += int(n)
                elif what == "failed":
                    f += int(n)
                elif what == "skipped":
                    s += int(n)
            last = ("totals", p, f, s)
            continue
        m = RE_CASES.match(line)
        if m:
            cases.append((int(m.group(1)), int(m.group(2))))
            continue
        m = RE_SKIP.match(line)
        if m:
            skips.append(m.group(1))
            continue
        if RE_NO_TESTS.match(line):
            no_tests = True

    c = LogCount()
    c.skip_reasons = skips
    if last:
        c.summary, c.passed, c.failed, c.skipped = last
    if cases:
        cp = sum(p for p, _ in cases)
        cf = sum(f for _, f in cases)
        failed_matrices = sum(1 for _, f in cases if f)
        passed_matrices = len(cases) - failed_matrices
        if last:
            # Each matrix test case of the Catch2 summary is replaced by its cases: a matrix with a
            # failed case is a failed Catch2 test case, one without is a passed one.
            c.passed = c.passed - min(c.passed, passed_matrices) + cp
            c.failed = c.failed - min(c.failed, failed_matrices) + cf
        else:
            c.summary, c.passed, c.failed = "cases", cp, cf
    if c.summary is None:
        if skips:
            c.summary, c.skipped = "skip", 1
        elif no_tests:
            c.summary = "no-tests"
    if c.summary != "skip" and not c.skipped:
        c.skip_reasons = []  # SKIP: lines beside a summary are notes; the summary counts
    if c.skipped and not c.skip_reasons:
        plural = "" if c.skipped == 1 else "s"
        c.skip_reasons = ["%d Catch2 test case%s skipped" % (c.skipped, plural)]
    return c


def uri_to_path(uri):
    if not uri.startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlparse(uri).path)


class Target:
    def __init__(self, label):
        self.label = label
        self.is_test = False
        self.kind = ""
        self.completed = None  # True / False once targetCompleted was seen
        self.completed_why = ""
        self.summary_status = None
        self.aborted = []  # (reason, description)
        self.results = {}  # (run, shard) -> {attempt: testResult}


class Outcome:
    def __init__(self, label):
        self.label = label
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.status = ""
        self.why = ""
        self.skip_reasons = []
        self.log = ""


def load_events(path, problems):
    events = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    events.append(json.loads(line))
                except ValueError:
                    problems.append("line %d of the build event file is not JSON (cut short?)" % n)
    except OSError as e:
        problems.append("cannot read the build event file: %s" % e.strerror)
    return events


def collect(events, problems):
    """Returns (targets by label, start time in s or None, finished event or None)."""
    targets = {}
    start = None
    finished = None

    def target(label):
        if label not in targets:
            targets[label] = Target(label)
        return targets[label]

    for e in events:
        eid = e.get("id", {})
        if not eid:
            continue
        kind, body = next(iter(eid.items()))
        label = body.get("label") if isinstance(body, dict) else None
        if "aborted" in e:
            a = e["aborted"]
            reason, desc = a.get("reason", "UNKNOWN"), a.get("description", "")
            if label and kind in ("targetConfigured", "targetCompleted", "testSummary",
                                  "testResult"):
                t = target(label)
                t.aborted.append((reason, desc))
                if kind in ("testSummary", "testResult"):
                    t.is_test = True
            elif kind == "pattern":
                problems.append("pattern %s was not run: %s %s" %
                                (" ".join(body.get("pattern", [])), reason, desc))
            elif kind == "buildFinished":
                problems.append("the build did not finish: %s %s" % (reason, desc))
            continue
        if kind == "started":
            ms = e.get("started", {}).get("startTimeMillis")
            if ms:
                start = int(ms) / 1000.0
        elif kind == "targetConfigured" and label:
            conf = e.get("configured", {})
            t = target(label)
            t.kind = conf.get("targetKind", "")
            if conf.get("testSize") or t.kind.endswith("_test rule"):
                t.is_test = True
        elif kind == "targetCompleted" and label:
            t = target(label)
            comp = e.get("completed", {})
            t.completed = bool(comp.get("success"))
            if not t.completed:
                msg = comp.get("failureDetail", {}).get("message", "")
                t.completed_why = msg.splitlines()[0] if msg else ""
            for child in e.get("children", []):
                if "testSummary" in child or "testResult" in child:
                    t.is_test = True
        elif kind == "testResult" and label:
            t = target(label)
            t.is_test = True
            key = (int(body.get("run", 1)), int(body.get("shard", 1)))
            t.results.setdefault(key, {})[int(body.get("attempt", 1))] = e.get("testResult", {})
        elif kind == "testSummary" and label:
            t = target(label)
            t.is_test = True
            t.summary_status = e.get("testSummary", {}).get("overallStatus", "NO_STATUS")
        elif kind == "buildFinished":
            finished = e.get("finished", {})
    return targets, start, finished


def read_result_log(result, start):
    """Returns (text, path, problem) for the test.log a testResult event names; text is None when
    that log must not be counted: a cached result, a missing log, one older than the invocation."""
    if result.get("cachedLocally") or result.get("executionInfo", {}).get("cachedRemotely"):
        return None, "", "its result was taken from a cache: it did not run in this invocation"
    path = None
    for out in result.get("testActionOutput", []):
        if out.get("name") == "test.log":
            path = uri_to_path(out.get("uri", ""))
    if not path:
        return None, "", "no test.log in its test result"
    try:
        st = os.stat(path)
        # Written during this invocation, not left over from an earlier one.
        if start is not None and st.st_mtime < start - 2:
            return None, path, "its test.log is older than this invocation"
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(), path, None
    except OSError as e:
        return None, path, "cannot read its test.log (%s)" % e.strerror


def count_target(t, start):
    o = Outcome(t.label)
    if not t.is_test:
        o.status = "NOT BUILT"
        o.failed = 1
        if t.aborted:
            o.why = "not a test; not built: %s %s" % t.aborted[0]
        else:
            o.why = "not a test; did not build" + (": " + t.completed_why
                                                   if t.completed_why else "")
        return o

    status = t.summary_status
    why = ""
    if status is None:
        if t.aborted:
            reason, desc = t.aborted[0]
            status = "NOT RUN"
            why = "aborted: %s%s" % (reason, (" (" + desc + ")") if desc else "")
        elif t.completed is False:
            status = "FAILED_TO_BUILD"
            why = t.completed_why
        else:
            status = "NO_STATUS"
            why = "Bazel reported no result"
    o.status = status

    # The final attempt of each run and shard, for reading the case counts.
    finals = [attempts[max(attempts)] for _, attempts in sorted(t.results.items())]
    logs = []
    problem = None
    for r in finals:
        text, path, p = read_result_log(r, start)
        o.log = o.log or path
        if p:
            problem = p
            break
        logs.append(read_log_counts(text))
    if status == "PASSED" and not finals:
        problem = "PASSED without a test result"

    if status != "PASSED" or problem:
        # Nothing of it counts as passed. Failed cases: its logs' failure summaries, at least 1.
        f = 0
        for _, attempts in t.results.items():
            worst = 0
            for r in attempts.values():
                text, _, _ = read_result_log(r, start)
                if text is not None:
                    worst = max(worst, read_log_counts(text).failed)
            f += worst
        o.failed = max(1, f)
        o.why = status + (": " + why if why else "") + ("; " + problem if problem else "")
        return o

    for c in logs:
        if c.summary == "no-tests":
            o.failed += 1
            o.why = "the test ran no test case (\"No tests ran\")"
        elif c.summary is None:
            o.passed += 1
        else:
            o.passed += c.passed
            o.failed += c.failed
            o.skipped += c.skipped
            o.skip_reasons += c.skip_reasons
    if o.failed and not o.why:
        o.why = "Bazel says PASSED but its log reports %d failed" % o.failed
    return o


def exit_meaning(rc):
    return EXIT_NAMES.get(rc, "exit code %d" % rc)


def count(bep, bazel_exit=None):
    """Returns (outcomes, problems) for one build event file."""
    problems = []
    events = load_events(bep, problems)
    targets, start, finished = collect(events, problems)
    if events and finished is None:
        problems.append("the build event file has no buildFinished event (Bazel stopped early?)")
    if not events and not problems:
        problems.append("the build event file is empty (did bazel run?)")
    outcomes = []
    for label in sorted(targets):
        t = targets[label]
        if not t.is_test and t.completed is not False and not any(
                reason != "SKIPPED" for reason, _ in t.aborted):
            continue  # a non-test target that was built (or skipped as incompatible)
        outcomes.append(count_target(t, start))
    if events and not any(targets[l].is_test for l in targets):
        problems.append("no test target in this invocation")
    if bazel_exit and not problems and not any(o.failed for o in outcomes):
        problems.append("bazel test exited %d (%s) though no test failed" %
                        (bazel_exit, exit_meaning(bazel_exit)))
    return outcomes, problems


def short(text, n=200):
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def report(what, outcomes, problems, out=sys.stdout):
    passed = sum(o.passed for o in outcomes)
    failed = sum(o.failed for o in outcomes) + len(problems)
    skipped = sum(o.skipped for o in outcomes)
    for o in outcomes:
        parts = "%d passed, %d failed" % (o.passed, o.failed)
        if o.skipped:
            parts += ", %d skipped (%s)" % (o.skipped, "; ".join(o.skip_reasons))
        if o.failed:
            parts += "  [%s]" % short(o.why)
        print("    %s: %s" % (o.label, parts), file=out)
    for p in problems:
        print("    %s: 1 failed  [%s]" % (what, p), file=out)
    print("    %s: %d passed, %d failed, %d skipped" % (what, passed, failed, skipped), file=out)
    return passed, failed, skipped


def write_totals(path, what, outcomes, problems, totals):
    with open(path, "w", encoding="utf-8") as f:
        f.write("passed %d\nfailed %d\nskipped %d\n" % totals)
        for o in outcomes:
            if o.failed:
                log = "; log: " + o.log if o.log else ""
                f.write("failure %s (%s%s)\n" % (o.label, short(o.why), log))
            for r in o.skip_reasons:
                f.write("skip %s: %s\n" % (o.label, short(r)))
        for p in problems:
            f.write("failure %s: %s\n" % (what, short(p)))


def check_expected(path, outcomes, totals):
    """Compares with an expected.txt (label passed failed skipped; 'total' for the sums)."""
    got = {o.label: (o.passed, o.failed, o.skipped) for o in outcomes}
    diffs = []
    seen = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            label, want = line[0], tuple(int(x) for x in line[1:4])
            seen.add(label)
            have = totals if label == "total" else got.get(label)
            if have != want:
                diffs.append("%s: expected %d passed, %d failed, %d skipped; counted %s" %
                             (label, *want, "nothing" if have is None else
                              "%d passed, %d failed, %d skipped" % have))
    for label in sorted(set(got) - seen):
        diffs.append("%s: counted but not expected" % label)
    return diffs


def synthetic_checks(tmpdir):
    """Cases that a real fixture cannot produce on demand: aborted events, stale or cached logs,
    a cut-short event file, Bazel failing while nothing failed. Returns the list of mismatches."""
    cfg = {"id": "c"}
    old = os.path.join(tmpdir, "old.log")
    with open(old, "w") as f:
        f.write("All tests passed (9 assertions in 9 test cases)\n")
    os.utime(old, (1000, 1000))
    new = os.path.join(tmpdir, "new.log")
    with open(new, "w") as f:
        f.write("test cases:  3 |  0 passed |  3 failed\n")
    good = os.path.join(tmpdir, "good.log")
    with open(good, "w") as f:
        f.write("All tests passed (5 assertions in 2 test cases)\n")

    def ev(kind, label, payload=None, **idx):
        e = {"id": {kind: dict(label=label, configuration=cfg, **idx)}}
        e.update(payload or {})
        return e

    def result(label, log, status, **extra):
        r = {"status": status, "testActionOutput": [{"name": "test.log", "uri": "file://" + log}]}
        r.update(extra)
        return ev("testResult", label, {"testResult": r}, run=1, shard=1, attempt=1)

    def summary(label, status):
        return ev("testSummary", label, {"testSummary": {"overallStatus": status}})

    start = {"id": {"started": {}}, "started": {"startTimeMillis": "2000000"}}
    done = {"id": {"buildFinished": {}}, "finished": {"exitCode": {"code": 0}}}
    conf = lambda label: {"id": {"targetConfigured": {"label": label}},
                          "configured": {"targetKind": "cc_test rule", "testSize": "SMALL"}}
    cases = [
        # name, events, bazel exit, expected (passed, failed, skipped)
        ("aborted, never run", [start, conf("//a:t"),
                                dict(ev("testSummary", "//a:t"), aborted={"reason": "SKIPPED"}),
                                done], 0, (0, 1, 0)),
        ("configured, no event after", [start, conf("//a:t"), done], 0, (0, 1, 0)),
        ("old log with PASSED", [start, conf("//a:t"), result("//a:t", old, "PASSED"),
                                 summary("//a:t", "PASSED"), done], 0, (0, 1, 0)),
        ("cached result", [start, conf("//a:t"), result("//a:t", new, "PASSED", cachedLocally=True),
                           summary("//a:t", "PASSED"), done], 0, (0, 1, 0)),
        ("failed, 3 failed cases", [start, conf("//a:t"), result("//a:t", new, "FAILED"),
                                    summary("//a:t", "FAILED"), done], 3, (0, 3, 0)),
        ("flaky", [start, conf("//a:t"), result("//a:t", new, "FAILED"),
                   summary("//a:t", "FLAKY"), done], 0, (0, 3, 0)),
        ("no buildFinished", [start, conf("//a:t"), result("//a:t", new, "FAILED"),
                              summary("//a:t", "FAILED")], 0, (0, 4, 0)),
        ("passed", [start, conf("//a:t"), result("//a:t", good, "PASSED"),
                    summary("//a:t", "PASSED"), done], 0, (2, 0, 0)),
        ("passed, but bazel exited 1", [start, conf("//a:t"), result("//a:t", good, "PASSED"),
                                        summary("//a:t", "PASSED"), done], 1, (2, 1, 0)),
        ("configured, no event, exit 1", [start, conf("//a:t"), done], 1, (0, 1, 0)),
        ("no test target", [start, done], 4, (0, 1, 0)),
        ("library not built", [start, {"id": {"targetConfigured": {"label": "//a:lib"}},
                                       "configured": {"targetKind": "cc_library rule"}},
                               ev("targetCompleted", "//a:lib", {"completed": {}}),
                               conf("//a:t"), result("//a:t", new, "FAILED"),
                               summary("//a:t", "FAILED"), done], 1, (0, 4, 0)),
    ]
    mismatches = []
    for name, events, rc, want in cases:
        bep = os.path.join(tmpdir, "bep.json")
        with open(bep, "w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        outcomes, problems = count(bep, rc)
        have = (sum(o.passed for o in outcomes), sum(o.failed for o in outcomes) + len(problems),
                sum(o.skipped for o in outcomes))
        if have != want:
            mismatches.append("%s: expected %s, counted %s" % (name, want, have))
    logs = [
        ("Catch2 padded failure summary", "test cases:  12 |  10 passed |  2 failed\n", (10, 2, 0)),
        ("Catch2 v3 skipped", "test cases: 3 | 2 passed | 1 skipped\n", (2, 0, 1)),
        ("matrix with a failed case",
         "CASES: 40 passed, 2 failed\nCASES: 30 passed, 0 failed\n"
         "test cases: 3 | 2 passed | 1 failed\n", (71, 2, 0)),
        ("skip only", "SKIP: no Xen\nSKIP: no KVM\n", (0, 0, 1)),
        ("no test ran", "No tests ran\n", (0, 0, 0)),
    ]
    for name, text, want in logs:
        c = read_log_counts(text)
        if (c.passed, c.failed, c.skipped) != want:
            mismatches.append("%s: expected %s, counted %s" %
                              (name, want, (c.passed, c.failed, c.skipped)))
    return mismatches


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] BEP_JSON_FILE | --synthetic-checks")
    ap.add_argument("bep", nargs="?", help="the file of bazel test --build_event_json_file")
    ap.add_argument("--what", default="bazel test", help="name of the invocation in the output")
    ap.add_argument("--bazel-exit", type=int, default=None,
                    help="bazel test's exit code: non-zero with no failure counted is 1 failure")
    ap.add_argument("--totals", help="write 'passed N', 'failed N', 'skipped N', 'failure TEXT' "
                    "and 'skip TEXT' lines to this file")
    ap.add_argument("--expect", help="compare with a file of 'label passed failed skipped' lines "
                    "(and 'total ...'); exit 0 only when every count matches")
    ap.add_argument("--synthetic-checks", action="store_true",
                    help="run the counter on made-up build event files and logs (aborted, stale, "
                    "cached, cut short); exit 0 when each is counted as expected")
    args = ap.parse_args()

    if args.synthetic_checks:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            mismatches = synthetic_checks(d)
        for m in mismatches:
            print("    synthetic check differs: " + m)
        if not mismatches:
            print("    synthetic checks: every case counted as expected")
        return 1 if mismatches else 0
    if not args.bep:
        ap.error("BEP_JSON_FILE is required")

    outcomes, problems = count(args.bep, args.bazel_exit)
    totals = report(args.what, outcomes, problems)
    if args.totals:
        write_totals(args.totals, args.what, outcomes, problems, totals)
    if args.expect:
        diffs = check_expected(args.expect, outcomes, totals)
        for d in diffs:
            print("    differs: " + d)
        return 1 if diffs else 0
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main())
