// Every check of "can this instance migrate to that host?", in one table (docs/DESIGN.md § Guards):
// its name (CheckResult.name), the record it judges, where it applies, and, for the checks the
// scheduler decides, its predicate (a CheckResult whose reason carries the numbers), the
// database's narrowing of the candidate query and the API's refusal. The API's request path, the
// pre-checks (CheckSource, CheckDestination), the candidate query (ChooseDestinations) and the dry
// run iterate this table; the agents' checks (driver/checks.cc) are listed with their side.
//
// Adding a check is one entry in kChecks (checks_registry.cc).
#ifndef LIVEMIG_SCHEDULER_CHECKS_REGISTRY_H_
#define LIVEMIG_SCHEDULER_CHECKS_REGISTRY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "db/records.h"
#include "proto/common.pb.h"

namespace livemig::sched {

namespace v1 = ::livemig::v1;

// Where a check applies (a bitmask).
enum CheckWhere : uint32_t {
  kRequest = 1u << 0,         // the API refuses the request (ApiCore::LiveMigrate): Check::refuse
  kSourcePrecheck = 1u << 1,  // CheckSource: the scheduler's pre-checks of the source (step 2)
  kDestPrecheck = 1u << 2,    // CheckDestination: each destination the scheduler considers
  kDbNarrowing = 1u << 3,     // ChooseDestinations' candidate query (Check::narrow)
  kDestAgent = 1u << 4,       // the destination agent's step 4 (driver/checks.cc and drivers)
  kSourceAgent = 1u << 5,     // the source agent's step 5
  // The dry run's own results: its instance checks, and its account of agents that did not
  // answer (it also runs every kSourcePrecheck and kDestPrecheck check, and the agents').
  kDryRun = 1u << 6,
};

// The record a check judges; its CheckResult.host is that record's host.
enum class CheckSubject { kInstance, kSource, kDestination };

// What a scheduler-side predicate sees. `src` may be null on the request path (source unknown):
// then source checks are skipped there. `dst`: destination checks only.
struct CheckContext {
  const db::InstanceRecord& inst;
  const db::HostRecord* src;
  const db::HostRecord* dst;
  const v1::MigrationOptions& options;
};

// The API's answer when a kRequest check fails. Of the failed checks, the API answers with the
// refusal of lowest `precedence` (then registry order). `instance_busy`: a retry of the request
// that holds the instance is answered with that migration instead.
struct Refusal {
  absl::Status status;
  int precedence = 0;
  bool instance_busy = false;
};

struct Check {
  const char* name;  // CheckResult.name
  CheckSubject subject;
  uint32_t where;  // CheckWhere bits
  // The scheduler's predicate (null for agent-only checks): `passed` and `reason` filled, with the
  // numbers; RunCheck sets name and host.
  v1::CheckResult (*predicate)(const CheckContext&) = nullptr;
  // kDbNarrowing: fills its part of the candidate query from the instance and the source.
  void (*narrow)(const CheckContext&, db::DestinationQuery*) = nullptr;
  // false: the narrowing is a necessary condition only (cpu: the architecture, not the features).
  bool narrows_exactly = true;
  // kRequest: the API's refusal when the predicate fails.
  Refusal (*refuse)(const CheckContext&, const v1::CheckResult&) = nullptr;
  // Agent checks only one driver makes ("LibvirtDriver"); null: every driver (the FakeDriver too).
  const char* only_driver = nullptr;
};

// The table, in the order the results are reported.
absl::Span<const Check> Checks();
// The check named `name` (nullptr if none).
const Check* FindCheck(std::string_view name);

// One check's result (name and host set); the check must have a predicate.
v1::CheckResult RunCheck(const Check& check, const CheckContext& ctx);
// Every check with a predicate, of `subject`, that applies at one of `where`, in table order.
std::vector<v1::CheckResult> RunChecks(uint32_t where, CheckSubject subject,
                                       const CheckContext& ctx);
// The candidate query's narrowing: every kDbNarrowing check fills its part (ctx.src required).
void NarrowQuery(const CheckContext& ctx, db::DestinationQuery* q);
// The API's refusal by the kRequest checks of `subject` (OK status: none fails).
Refusal RefuseRequest(CheckSubject subject, const CheckContext& ctx);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_CHECKS_REGISTRY_H_
