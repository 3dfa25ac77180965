// The post-migrating phase of a migration (migration_run.h): post_live_migration on the source,
// then at the destination, retried until roll_forward_for (then `error`). No undo: the domain
// runs on the destination; the only way is forward.
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/test_hooks.h"
#include "scheduler/migration_run.h"

namespace livemig::sched {

absl::Status MigrationRun::PostMigrating() {
  ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
  ASSIGN_OR_RETURN(auto dst, Agent(m_.dest_host));
  const absl::Time deadline = Now() + opt().roll_forward_for;
  int failures = 0;  // the waits grow by the retry policy, without its attempt limit
  bool src_done = m_.step == v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION;
  absl::Time t = Now();
  std::string last;
  while (!o_->Stopping()) {
    if (!src_done) {
      TestPoint("post_live_migration:before");
      auto p = src->PostLiveMigration(StepReq<cv1::PostLiveMigrationRequest>());
      if (p.ok()) {
        TestPoint("post_live_migration:after");
        src_done = true;
        RETURN_IF_ERROR(Record(v1::MIGRATION_STEP_POST_LIVE_MIGRATION, true, "source cleaned up", t,
                               Intent(v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION)));
        t = Now();
      } else {
        last = std::string(p.status().message());
      }
    }
    if (src_done) {
      TestPoint("post_live_migration_at_destination:before");
      auto at = dst->PostLiveMigrationAtDestination(
          StepReq<cv1::PostLiveMigrationAtDestinationRequest>());
      if (at.ok()) {
        TestPoint("post_live_migration_at_destination:after");
        return Move(S::kCompleted, v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION, true,
                    absl::StrCat("the instance runs on ", m_.dest_host), t);
      }
      last = std::string(at.status().message());
    }
    if (Now() > deadline) {
      return Move(S::kError,
                  src_done ? v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION
                           : v1::MIGRATION_STEP_POST_LIVE_MIGRATION,
                  false, "roll-forward could not finish: " + last, t);
    }
    Note(src_done ? v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION
                  : v1::MIGRATION_STEP_POST_LIVE_MIGRATION,
         "post step failed, rolling forward (retrying): " + last);
    Sleep(opt().retry.Backoff(failures++));
  }
  return absl::OkStatus();
}

}  // namespace livemig::sched
