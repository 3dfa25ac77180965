// Test-only pause points at the step boundaries of a migration, for the crash-matrix tests.
//
// Off unless the process was started with LIVEMIG_TEST_HOOK_DIR in its environment (only the
// tests set it; the production units and the quickstart never do). When off, TestPoint is one
// branch on a cached pointer.
//
// When on, every point passed is appended to <dir>/points.log as "<process>:<point>", and a
// point pauses when <dir>/arm holds exactly "<process>:<point>": the process takes the arm file
// (rename, so only one caller wins), writes <dir>/paused with that name and waits until
// <dir>/resume appears (then removes both and goes on) — or until it is killed, which is the
// point of the exercise.
//
//   SetTestPointProcess("scheduler");                 // once, in main()
//   TestPoint("pre_live_migration:before");           // intent committed, RPC not yet sent
#ifndef LIVEMIG_COMMON_TEST_HOOKS_H_
#define LIVEMIG_COMMON_TEST_HOOKS_H_

#include <string>

namespace livemig {

// Names this process in the hook files: "scheduler", "agent:<hostname>".
void SetTestPointProcess(const std::string& name);
// A named boundary: "<step>:before", "<step>:after", ...
void TestPoint(const std::string& point);
// Whether the hooks are on in this process (LIVEMIG_TEST_HOOK_DIR set).
bool TestHooksEnabled();

}  // namespace livemig

#endif  // LIVEMIG_COMMON_TEST_HOOKS_H_
