"""The shapes of the test targets that several packages repeat.

test_library: a testonly cc_library of one <name>.cc and <name>.h (a helper only tests link).
system_test:  a cc_test of <name>.cc that runs real processes (PostgreSQL, the scheduler, agents,
              labs): root, outside the sandbox, one at a time (SYSTEM_TEST_TAGS), large by default.
e2e_test:     a system_test on //integration_tests/scheduler_e2e:e2e (the real scheduler and
              PostgreSQL) with the fake driver's agents, the process helpers and Catch2's main.
"""

# Outside the sandbox (where only root exists: initdb refuses root, `ip netns add` fails), and one
# at a time (two heavy tests at once on a 2-core machine). See README.md, "Build rules".
SYSTEM_TEST_TAGS = [
    "exclusive",
    "no-sandbox",
]

# What every e2e_test links besides its own deps.
_E2E_DEPS = [
    "//driver:fake_driver",
    "//integration_tests/scheduler_e2e:e2e",
    "//testing:process",
    "//testing:run_command",
    "//third_party/sys:catch2_main",
]

def test_library(name, **kwargs):
    """A testonly cc_library of <name>.cc and <name>.h; kwargs: data, deps."""
    native.cc_library(
        name = name,
        testonly = True,
        srcs = [name + ".cc"],
        hdrs = [name + ".h"],
        **kwargs
    )

def system_test(name, size = "large", tags = [], **kwargs):
    """A cc_test of <name>.cc tagged SYSTEM_TEST_TAGS + tags; kwargs: data, deps."""
    native.cc_test(
        name = name,
        size = size,
        srcs = [name + ".cc"],
        tags = SYSTEM_TEST_TAGS + tags,
        **kwargs
    )

def _relative(label):
    """label as written in the calling package (":e2e" inside //integration_tests/scheduler_e2e)."""
    prefix = "//" + native.package_name() + ":"
    return ":" + label[len(prefix):] if label.startswith(prefix) else label

def _buildifier_order(label):
    """Sort key of deps in buildifier's order: the package's own targets first, then by label."""
    return (0 if label.startswith(":") else 1, label)

def e2e_test(name, deps = [], **kwargs):
    """A system_test with _E2E_DEPS added to `deps` (merged in buildifier's order)."""
    system_test(
        name = name,
        deps = sorted([_relative(d) for d in _E2E_DEPS] + deps, key = _buildifier_order),
        **kwargs
    )
