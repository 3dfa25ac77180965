// The preparing phase of a migration (migration_run.h): steps 4-6 (the agents' checks on the
// destination and the source, pre_live_migration on the destination), trying up to
// destination_attempts candidates. Undo: RollBack (run_rollback.cc).
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/test_hooks.h"
#include "scheduler/convert.h"
#include "scheduler/migration_run.h"
#include "scheduler/prechecks.h"

namespace livemig::sched {
namespace {

// Why an agent's check step refused: its first failed check, or the call's own error (then the
// step is named as the check that failed).
template <typename Response>
void NoteRefusal(const absl::StatusOr<Response>& r, v1::MigrationStep step, std::string* reason,
                 std::string* check) {
  *reason = r.ok() ? FirstFailure(r->checks()) : std::string(r.status().message());
  *check = r.ok() ? FirstFailedCheck(r->checks()) : StepName(step);
}

}  // namespace

absl::Status MigrationRun::Preparing() {
  if (AbortRequested()) return RollBack(S::kCancelled, AbortReason());
  ASSIGN_OR_RETURN(db::HostRecord src_host, Host(m_.source_host));
  ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
  const v1::MigrationOptions options = OptionsFromJson(m_.options_json);
  if (candidates_.empty()) candidates_.push_back(m_.dest_host);
  std::string last_reason, last_check;
  int attempts = 0;
  for (const std::string& cand : candidates_) {
    if (attempts++ >= opt().destination_attempts) break;
    if (cand != m_.dest_host) {
      RETURN_IF_ERROR(Record(v1::MIGRATION_STEP_SELECT_DESTINATION, true, "falling back to " + cand,
                             Now(), Intent(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, cand),
                             cand));
    }
    ASSIGN_OR_RETURN(db::HostRecord dst_host, Host(cand));
    ASSIGN_OR_RETURN(auto dst, Agent(cand));
    // Step 4 on the destination.
    absl::Time t = Now();
    const cv1::DescribeInstanceRequest di = DescribeRequest(m_.instance_uuid);
    auto desc = Retry<cv1::DescribeInstanceResponse>([&] { return src->DescribeInstance(di); });
    if (!desc.ok()) return RollBack(S::kFailed, std::string(desc.status().message()));
    if (!desc->present()) {
      return RollBack(S::kFailed, absl::StrCat("instance ", m_.instance_uuid,
                                               " is not on its source ", m_.source_host));
    }
    const auto dreq = DestCheckRequest(Target(), src_host, desc->domain(), options);
    TestPoint("check_can_live_migrate_on_dest:before");
    auto d = Retry<cv1::CheckCanLiveMigrateOnDestResponse>(
        [&] { return dst->CheckCanLiveMigrateOnDest(dreq); });
    TestPoint("check_can_live_migrate_on_dest:after");
    if (!d.ok() || !d->passed()) {
      NoteRefusal(d, v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, &last_reason, &last_check);
      RETURN_IF_ERROR(Record(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, false, last_reason,
                             t, std::nullopt));
      if (!m_.requested_dest.empty()) break;
      continue;
    }
    data_.Clear();
    *data_.mutable_dest_check() = d->dest_check_data();
    RETURN_IF_ERROR(Record(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, true,
                           "destination accepts", t,
                           Intent(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC)));
    // Step 5 on the source.
    t = Now();
    const auto sreq = SrcCheckRequest(Target(), d->dest_check_data(), options);
    TestPoint("check_can_live_migrate_on_src:before");
    auto s = Retry<cv1::CheckCanLiveMigrateOnSrcResponse>(
        [&] { return src->CheckCanLiveMigrateOnSrc(sreq); });
    TestPoint("check_can_live_migrate_on_src:after");
    if (!s.ok() || !s->passed()) {
      NoteRefusal(s, v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC, &last_reason, &last_check);
      const auto cleanup = DestCleanupRequest(Target(), d->dest_check_data());
      Retry<cv1::CheckCanLiveMigrateOnDestCleanupResponse>([&] {
        return dst->CheckCanLiveMigrateOnDestCleanup(cleanup);
      }).IgnoreError();
      RETURN_IF_ERROR(Record(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC, false, last_reason,
                             t, std::nullopt));
      if (!m_.requested_dest.empty()) break;
      continue;
    }
    *data_.mutable_src_check() = s->src_check_data();
    RETURN_IF_ERROR(
        Record(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC, true,
               s->src_check_data().block_migration() ? "block migration" : "shared storage", t,
               Intent(v1::MIGRATION_STEP_PRE_LIVE_MIGRATION, cand)));
    // Step 6 on the destination.
    t = Now();
    auto pre = StepReq<cv1::PreLiveMigrationRequest>();
    *pre.mutable_migrate_data() = data_;
    *pre.mutable_options() = options;
    TestPoint("pre_live_migration:before");
    auto p = Retry<cv1::PreLiveMigrationResponse>([&] { return dst->PreLiveMigration(pre); });
    TestPoint("pre_live_migration:after");
    if (!p.ok()) return RollBack(S::kFailed, std::string(p.status().message()));
    *data_.mutable_pre_live_migration() = p->pre_live_migration_data();
    prepared_ = true;
    state_before_ = desc->domain().state();
    ASSIGN_OR_RETURN(m_, o_->migrations_->GetMigration(id_));
    if (AbortRequested()) return RollBack(S::kCancelled, AbortReason());
    return Move(S::kRunning, v1::MIGRATION_STEP_PRE_LIVE_MIGRATION, true, "destination prepared", t,
                Intent(v1::MIGRATION_STEP_LIVE_MIGRATION),
                [](db::Transition& tr) { tr.mark_started = true; });
  }
  return Move(S::kFailed, v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, false,
              last_reason.empty() ? "no destination passed the agent checks" : last_reason, Now(),
              std::nullopt,
              Refused(last_check.empty() ? "check_can_live_migrate_on_dest" : last_check));
}

}  // namespace livemig::sched
