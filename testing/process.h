// A child process for multi-process tests: started with a shell command, its output to a log
// file, stopped (SIGTERM, then SIGKILL) and reaped by the destructor even when a test fails.
#ifndef LIVEMIG_TESTING_PROCESS_H_
#define LIVEMIG_TESTING_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace livemig::testing {

class ChildProcess {
 public:
  // Runs `command` with /bin/sh -c ... in its own process group; stdout+stderr go to `log`.
  ChildProcess(const std::string& command, const std::string& log);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  // Sends `sig` to the process group.
  void Signal(int sig);
  // SIGTERM, waits up to `grace`, then SIGKILL; reaps. Returns the exit status (or -signal).
  int Stop(absl::Duration grace = absl::Seconds(10));
  // SIGKILL now (a crash), reaps.
  void Kill();
  const std::string& log() const { return log_; }
  std::string LogTail(int lines = 30) const;

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
  std::string log_;
};

// Polls `pred` every 20 ms until it is true or `timeout` passes.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout);

// A free TCP port on 127.0.0.1 (bound to port 0 and released).
int FreePort();

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_PROCESS_H_
