#include "testing/run_command.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace livemig::testing {

absl::StatusOr<std::string> RunCommand(const std::string& command) {
  std::string err_file = absl::StrCat("/tmp/livemig-cmd-", getpid(), "-", rand(), ".err");
  std::string full = absl::StrCat("(", command, ") 2>", err_file);
  FILE* f = popen(full.c_str(), "r");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot run: ", command));
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  int rc = pclose(f);
  std::ifstream ef(err_file);
  std::string err((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
  unlink(err_file.c_str());
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("command failed (status ", WEXITSTATUS(rc), "): ", command, ": ", err));
  }
  return out;
}

CommandResult RunCaptured(const std::string& command, const std::string& base) {
  const int rc =
      std::system(absl::StrCat(command, " >", base, ".out 2>", base, ".err </dev/null").c_str());
  CommandResult r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = ReadFile(base + ".out");
  r.err = ReadFile(base + ".err");
  return r;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string RunfilePath(const std::string& rel) {
  for (const std::string& p : {rel, "../" + rel}) {
    if (access(p.c_str(), F_OK) == 0) return p;
  }
  if (const char* src = getenv("TEST_SRCDIR")) {
    std::string p = absl::StrCat(src, "/livemig/", rel);
    if (access(p.c_str(), F_OK) == 0) return p;
  }
  return rel;
}

std::string MakeTempDir(const std::string& tag) {
  const char* base = getenv("TEST_TMPDIR");
  std::string t = absl::StrCat(base ? base : "/tmp", "/", tag, "-XXXXXX");
  if (mkdtemp(t.data()) == nullptr) return "";
  return t;
}

}  // namespace livemig::testing

namespace livemig::testing {
RemoveDirAtEnd::~RemoveDirAtEnd() {
  if (!path.empty() && getenv("LIVEMIG_KEEP_TEST_DIR") == nullptr) {
    RunCommand("rm -rf '" + path + "'").IgnoreError();
  }
}

std::string MakeShortTempDir(const std::string& tag) {
  std::string t = absl::StrCat("/tmp/lm-", tag, "-XXXXXX");
  if (mkdtemp(t.data()) == nullptr) return "";
  return t;
}
}  // namespace livemig::testing
