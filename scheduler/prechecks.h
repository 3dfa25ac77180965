// Flow step 2: the pre-checks the scheduler runs from what the database knows, and the choice of
// a destination when none is given. Pure functions: every check's result carries its reason with
// the numbers (e.g. "destination host-b has 412 MiB free after the 512 MiB dom0 reserve and
// 1024 MiB claimed by inbound migrations; instance web-1 needs 1024 MiB").
#ifndef LIVEMIG_SCHEDULER_PRECHECKS_H_
#define LIVEMIG_SCHEDULER_PRECHECKS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "db/records.h"
#include "db/stores.h"
#include "proto/scheduler.pb.h"

namespace livemig::sched {

namespace v1 = ::livemig::v1;
namespace sv1 = ::livemig::scheduler::v1;

// The checks of one candidate destination for an instance on `src` (the kDestPrecheck checks of
// scheduler/checks_registry.h, in order); `dst.memory_claimed_mib` is the memory already claimed
// on `dst` by other inbound migrations.
sv1::HostCheck CheckDestination(const db::InstanceRecord& inst, const db::HostRecord& src,
                                const db::HostRecord& dst, const v1::MigrationOptions& options);

// Every host but the source, checked, the survivors ranked (most memory available after claims,
// then fewest migrations in flight): passed hosts first, in rank order (rank 1 = best).
std::vector<sv1::HostCheck> RankDestinations(const db::InstanceRecord& inst,
                                             const db::HostRecord& src,
                                             const std::vector<db::HostRecord>& hosts,
                                             const v1::MigrationOptions& options);

// How many destination candidates the scheduler considers when it chooses the destination: the
// database returns the best this many (ChooseDestinations' `limit`), and a migration stores at most
// this many of the ranked candidates, best first (Migration.candidates: every one considered, when
// one passed; the first this many of every host, when none did).
inline constexpr int kDestinationCandidates = 32;

// The orchestrator's choice when no destination is given, without reading every host: the
// database returns the best `limit` hosts that pass the checks it can decide (the kDbNarrowing
// checks: enabled, up, same hypervisor type, version not older, same CPU architecture, enough
// memory after claims; HostStore::ListDestinationCandidates), and RankDestinations runs the full
// checks on those. The passed hosts and their order are RankDestinations' over every host, up to
// `limit`. When none of them passes, every host is checked (ListHosts), so that the reasons name
// each rejected host.
absl::StatusOr<std::vector<sv1::HostCheck>> ChooseDestinations(db::HostStore& hosts,
                                                               const db::InstanceRecord& inst,
                                                               const db::HostRecord& src,
                                                               const v1::MigrationOptions& options,
                                                               absl::Duration service_down_time,
                                                               int limit = kDestinationCandidates);

// Why host `h` counts as down, as users read it (the API's refusal, the pre-checks, the dry run):
// which host, that it is down, since when it has not reported and for how long, and what to do.
// `role`: "source" or "destination".
std::string HostDownReason(const std::string& role, const db::HostRecord& h,
                           absl::Time now = absl::Now());

// Whether the source host can drive the migration (up; options supported by its backend): the
// kSourcePrecheck checks of scheduler/checks_registry.h.
std::vector<v1::CheckResult> CheckSource(const db::InstanceRecord& inst, const db::HostRecord& src,
                                         const v1::MigrationOptions& options);

// Whether host `h`'s backend supports every requested option (e.g. libxl: no bandwidth limit,
// no max downtime, no post-copy): OK, or FailedPrecondition naming what is missing and the host.
absl::Status HostSupportsOptions(const db::HostRecord& h, const v1::MigrationOptions& options);

// Host `h`'s backend capabilities (its report's capabilities_json, parsed once per text).
v1::BackendCapabilities HostCapabilities(const db::HostRecord& h);

// The first failed check's reason, or "".
std::string FirstFailure(const google::protobuf::RepeatedPtrField<v1::CheckResult>& checks);
// The first failed check's name (CheckResult.name), or "".
std::string FirstFailedCheck(const google::protobuf::RepeatedPtrField<v1::CheckResult>& checks);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_PRECHECKS_H_
