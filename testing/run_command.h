// Small process helpers for tests.
#ifndef LIVEMIG_TESTING_RUN_COMMAND_H_
#define LIVEMIG_TESTING_RUN_COMMAND_H_

#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace livemig::testing {

// Runs a shell command; returns its stdout, or an error with its stderr and exit status.
absl::StatusOr<std::string> RunCommand(const std::string& command);

// What RunCaptured saw: the exit status (-1 when the command did not exit normally), and what the
// command wrote on stdout and on stderr.
struct CommandResult {
  int code = -1;
  std::string out, err;
};
// Runs a shell command with stdin from /dev/null, its stdout and stderr kept apart (in the files
// `base`.out and `base`.err, which stay).
CommandResult RunCaptured(const std::string& command, const std::string& base);

// The contents of a file ("" when it cannot be read).
std::string ReadFile(const std::string& path);

// The path of a workspace file (e.g. "deploy/pki.sh") from a test's runfiles or the source tree.
std::string RunfilePath(const std::string& workspace_relative);

// A new private directory under $TEST_TMPDIR (or /tmp).
std::string MakeTempDir(const std::string& tag);
// A new private directory directly under /tmp: Unix socket paths must stay under 108 bytes,
// which Bazel's TEST_TMPDIR exceeds. The caller removes it (RemoveDirAtEnd).
std::string MakeShortTempDir(const std::string& tag);

// Removes directory `path` (rm -rf) when destroyed, unless LIVEMIG_KEEP_TEST_DIR is set (to look
// at the logs after a run). As a member, declare it before everything that writes there (processes,
// state): members are destroyed in reverse order, so the directory goes last.
struct RemoveDirAtEnd {
  explicit RemoveDirAtEnd(std::string p) : path(std::move(p)) {}
  RemoveDirAtEnd(const RemoveDirAtEnd&) = delete;
  RemoveDirAtEnd& operator=(const RemoveDirAtEnd&) = delete;
  ~RemoveDirAtEnd();
  std::string path;
};

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_RUN_COMMAND_H_
