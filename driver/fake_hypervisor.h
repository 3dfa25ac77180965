// FakeHypervisor: the in-memory model of fake hosts, their domains, staged configurations,
// injected failures and transfers that FakeDriver (driver/fake_driver.h) drives, one FakeDriver
// per fake host.
//
// The hypervisors' state lives in a state directory shared by the fake hosts of one test
// (state.json under an flock), outside the agent processes: killing an agent does not kill its
// "hypervisor". A transfer proceeds without its agent: it completes at its scheduled time,
// evaluated whenever the state is read.
//
//   FakeHypervisor hv("/tmp/state");
//   hv.CreateDomain("fake-a", uuid, "web-1", 1024);        // a running guest
//   hv.SetFailure("fake-b", "pre_live_migration", "disk full");   // fail that step once
//
// Action journal: every mutating driver action (a step that reached the driver, a transfer
// started, aborted or forced, and the transfer ending by itself, marked `automatic`) appends an
// entry {host, step, migration_id, time} to <state_dir>/journal.jsonl, so that fault tests can
// check that the scheduler recorded each step's intent before the hypervisor acted
// (FakeHypervisor::Journal). Repeated steps answered from an agent's record never reach the driver
// and are not journaled. The journal is never truncated: it grows with every action (about 100
// bytes each) for as long as the state directory lives.
//
// Cost: each process keeps the parsed state of a state directory in memory (shared by every
// FakeHypervisor/FakeDriver object of that process on that directory) and re-reads state.json
// only when its identity (device, inode, size, mtime in ns) differs from what the process last
// read or wrote; writers give each new state.json a strictly later mtime than the one it
// replaces, so that a write by another process is always seen. Only running transfers are
// scanned on each call; finished transfers are pruned (FakeHypervisor::kFinishedTransferKeep,
// kMaxFinishedTransfers).
#ifndef LIVEMIG_DRIVER_FAKE_HYPERVISOR_H_
#define LIVEMIG_DRIVER_FAKE_HYPERVISOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "driver/compute_driver.h"
#include "nlohmann/json.hpp"

namespace livemig::driver {

namespace internal {
struct FakeStateCache;  // the per-process, per-directory parsed state (fake_hypervisor.cc)
struct FakeStateIndex;  // derived from the state: running transfers, finished ones' count
}  // namespace internal

class FakeDriver;

// Direct access to the shared fake hypervisor state (for tests, tools and benchmarks).
// Thread- and process-safe (every operation holds the state directory's lock).
class FakeHypervisor {
 public:
  // One journaled driver action (see the file comment).
  struct JournalEntry {
    std::string host;  // the fake host whose driver acted (the source for a transfer's end)
    std::string step;  // the driver method's step name, e.g. "pre_live_migration", or
                       // "transfer_completed" / "transfer_failed" / "completion_timeout"
    std::string migration_id;
    absl::Time time;         // when it happened (the hypervisor's clock, ms resolution)
    bool automatic = false;  // no agent call: the transfer progressing by itself
  };

  // A finished transfer (completed, failed, cancelled) stays in the state, so that its progress
  // can still be asked for (e.g. by an agent restarted after a crash), for at least this long
  // after it finished, unless more than kMaxFinishedTransfers finished after it: only that many
  // of the most recently finished are kept. Running transfers are never pruned. Pruning happens
  // in any call (time is the hypervisor's clock).
  static constexpr absl::Duration kFinishedTransferKeep = absl::Minutes(10);
  static constexpr size_t kMaxFinishedTransfers = 1000;

  explicit FakeHypervisor(std::string state_dir, Clock* clock = Clock::Real());

  // Runs `fn` on the state under the lock, after advancing transfers to `now`; writes the state
  // back if fn sets *changed (also when fn returns an error). fn must set *changed whenever it
  // modifies the state: a modification without it is discarded, as if fn had not run (the
  // process's cached copy is dropped and the next call re-reads state.json).
  absl::Status Mutate(const std::function<absl::Status(nlohmann::json&, bool* changed)>& fn);
  // Runs `fn` on the state under the lock, after advancing transfers to `now`, read-only.
  absl::Status Read(const std::function<absl::Status(const nlohmann::json&)>& fn);

  // Creates a domain on `host` (state: running, paused or shutoff). AlreadyExists if present.
  // `kind`: its Xen guest kind, "pv", "pvh" or "hvm" (kept when it migrates); "" (default): PV.
  // A fake-libxl host reports it (DomainInfo.guest_kind), a fake-qemu host never does.
  absl::Status CreateDomain(const std::string& host, const std::string& uuid,
                            const std::string& name, uint64_t memory_mib,
                            const std::string& state = "running",
                            std::vector<std::string> bridges = {"br-guest"},
                            const std::string& kind = "");
  // Fails the next `times` calls of `step` on `host` with `message` (status code `code`).
  // Steps: check_can_live_migrate_on_dest, check_can_live_migrate_on_src, pre_live_migration,
  // live_migration (refused at start), transfer (fails mid-way), post_live_migration,
  // post_live_migration_at_destination, rollback_live_migration,
  // rollback_live_migration_at_destination, abort, force_complete.
  // `reason`: the machine-readable reason the failure carries (common/status_map.h).
  absl::Status SetFailure(const std::string& host, const std::string& step,
                          const std::string& message, int times = 1,
                          absl::StatusCode code = absl::StatusCode::kInternal,
                          v1::ErrorReason reason = v1::ERROR_REASON_UNSPECIFIED);
  // Every later transfer from `host` takes this long (default 0: immediate).
  absl::Status SetTransferDuration(const std::string& host, absl::Duration d);
  // Every later completed transfer from `host` reports this guest downtime, as QEMU's job
  // statistics do (default: none reported). Only the fake-qemu profile reports it; fake-libxl,
  // like Xen, never does.
  absl::Status SetTransferDowntime(const std::string& host, absl::Duration d);
  // Where the domain runs now: the hosts that have it, with their state ("running",
  // "paused", "incoming").
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Locate(const std::string& uuid);
  // A copy of the whole state (after advancing transfers).
  absl::StatusOr<nlohmann::json> Snapshot();
  // Every journaled driver action so far, oldest first (after advancing transfers).
  absl::StatusOr<std::vector<JournalEntry>> Journal();

  Clock* clock() const { return clock_; }
  const std::string& state_dir() const { return dir_; }

 private:
  friend class FakeDriver;
  using MutateFn = std::function<absl::Status(nlohmann::json&, bool* changed,
                                              const internal::FakeStateIndex& before_fn)>;
  using ReadFn =
      std::function<absl::Status(const nlohmann::json&, const internal::FakeStateIndex&)>;
  // The one transaction: exactly one of `mutate` and `read` is set. The index passed to
  // `mutate` describes the state before fn ran.
  absl::Status Transact(const MutateFn* mutate, const ReadFn* read);
  absl::Status MutateIndexed(const MutateFn& fn) { return Transact(&fn, nullptr); }
  absl::Status ReadIndexed(const ReadFn& fn) { return Transact(nullptr, &fn); }

  std::string dir_;
  Clock* clock_;
  std::shared_ptr<internal::FakeStateCache> cache_;  // shared with this process's objects on dir_
};

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_FAKE_HYPERVISOR_H_
