// The fake hypervisor's state as FakeHypervisor (fake_hypervisor.cc) and FakeDriver
// (fake_driver.cc) both read and change it: the index kept beside the parsed state, and the few
// helpers both use on state.json's JSON. Private to the fake_driver library.
#ifndef LIVEMIG_DRIVER_FAKE_STATE_H_
#define LIVEMIG_DRIVER_FAKE_STATE_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "common/clock.h"
#include "common/retention.h"
#include "driver/fake_hypervisor.h"
#include "nlohmann/json.hpp"

namespace livemig::driver::internal {

// What a process derives from the state when it parses it, kept up to date with it: running
// transfers are found without scanning the finished ones, and pruning is due only when the
// finished ones exceed a limit.
struct FakeStateIndex {
  std::map<std::string, std::string> running;  // migration id -> domain uuid, state "running"
  // The transfers in any other state, by when they finished.
  FinishedRetention<std::string> finished{
      {FakeHypervisor::kFinishedTransferKeep, FakeHypervisor::kMaxFinishedTransfers}};
};

int64_t NowMs(Clock* c);

// Creates `path` and its missing parents (mode 0755).
absl::Status MkdirP(const std::string& path);

// Read-only member access: a null value when `j` is not an object or lacks `key`.
const nlohmann::json& Get(const nlohmann::json& j, const std::string& key);

// Journals a driver action (see FakeHypervisor::Journal): queued in the state under the lock,
// then appended to <state_dir>/journal.jsonl when the transaction ends (an append-only file, so
// that a long benchmark does not make state.json grow).
void Journal(nlohmann::json& st, const std::string& host, const std::string& step,
             const std::string& id, int64_t ms, bool automatic = false);

// Whether transfer `t` is running.
bool IsRunning(const nlohmann::json& t);

// Consumes one injected failure of `step` on `host` (FakeHypervisor::SetFailure), if any: returns
// it and sets *changed; else OK.
absl::Status TakeFailure(nlohmann::json& st, const std::string& host, const std::string& step,
                         bool* changed);

}  // namespace livemig::driver::internal

#endif  // LIVEMIG_DRIVER_FAKE_STATE_H_
