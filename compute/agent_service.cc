#include "compute/agent_service.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_map.h"
#include "common/tls.h"

namespace livemig::agent {

AllowList::AllowList(std::vector<std::string> identities, bool insecure) : insecure_(insecure) {
  Replace(std::move(identities));
}

void AllowList::Replace(std::vector<std::string> identities) {
  absl::MutexLock l(&mu_);
  ids_ = std::set<std::string>(identities.begin(), identities.end());
}

std::vector<std::string> AllowList::identities() const {
  absl::MutexLock l(&mu_);
  return std::vector<std::string>(ids_.begin(), ids_.end());
}

absl::Status AllowList::Check(const std::string& identity, const std::string& rpc) const {
  if (insecure_) return absl::OkStatus();
  if (identity.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat(rpc, " needs a client certificate from the cluster CA"));
  }
  absl::MutexLock l(&mu_);
  if (ids_.count(identity)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "identity '", identity, "' may not call ", rpc,
      " on this agent: add it to the agent's --allow list (allowed: ", absl::StrJoin(ids_, ", "),
      ")"));
}

template <typename Resp, typename Fn>
grpc::Status AgentService::Handle(grpc::ServerContext* ctx, const char* rpc, bool step, Resp* out,
                                  Fn fn) {
  if (step) {
    absl::Status auth = allow_->Check(PeerIdentity(*ctx), rpc);
    if (!auth.ok()) {
      LogWarning("refused %s from '%s': %s", rpc, PeerIdentity(*ctx), auth.message());
      return ToGrpcStatus(auth);
    }
  }
  auto r = fn();
  if (!r.ok()) return ToGrpcStatus(r.status());
  *out = std::move(r).value();
  return grpc::Status::OK;
}

grpc::Status AgentService::GetHostInfo(grpc::ServerContext* ctx, const cv1::GetHostInfoRequest*,
                                       cv1::GetHostInfoResponse* out) {
  return Handle(ctx, "GetHostInfo", false, out, [&] { return core_->GetHostInfo(); });
}
grpc::Status AgentService::ListDomains(grpc::ServerContext* ctx, const cv1::ListDomainsRequest*,
                                       cv1::ListDomainsResponse* out) {
  return Handle(ctx, "ListDomains", false, out, [&] { return core_->ListDomains(); });
}
grpc::Status AgentService::DescribeInstance(grpc::ServerContext* ctx,
                                            const cv1::DescribeInstanceRequest* req,
                                            cv1::DescribeInstanceResponse* out) {
  return Handle(ctx, "DescribeInstance", false, out, [&] { return core_->DescribeInstance(*req); });
}
grpc::Status AgentService::PauseInstance(grpc::ServerContext* ctx,
                                         const cv1::PauseInstanceRequest* req,
                                         cv1::PauseInstanceResponse* out) {
  // Changes a domain's state: only callers on the allow-list, as the steps.
  return Handle(ctx, "PauseInstance", true, out, [&] { return core_->PauseInstance(*req); });
}
grpc::Status AgentService::CheckCanLiveMigrateOnDest(
    grpc::ServerContext* ctx, const cv1::CheckCanLiveMigrateOnDestRequest* req,
    cv1::CheckCanLiveMigrateOnDestResponse* out) {
  return Handle(ctx, "CheckCanLiveMigrateOnDest", true, out,
                [&] { return core_->CheckCanLiveMigrateOnDest(*req); });
}
grpc::Status AgentService::CheckCanLiveMigrateOnSrc(grpc::ServerContext* ctx,
                                                    const cv1::CheckCanLiveMigrateOnSrcRequest* req,
                                                    cv1::CheckCanLiveMigrateOnSrcResponse* out) {
  return Handle(ctx, "CheckCanLiveMigrateOnSrc", true, out,
                [&] { return core_->CheckCanLiveMigrateOnSrc(*req); });
}
grpc::Status AgentService::CheckCanLiveMigrateOnDestCleanup(
    grpc::ServerContext* ctx, const cv1::CheckCanLiveMigrateOnDestCleanupRequest* req,
    cv1::CheckCanLiveMigrateOnDestCleanupResponse* out) {
  return Handle(ctx, "CheckCanLiveMigrateOnDestCleanup", true, out,
                [&] { return core_->CheckCanLiveMigrateOnDestCleanup(*req); });
}
grpc::Status AgentService::PreLiveMigration(grpc::ServerContext* ctx,
                                            const cv1::PreLiveMigrationRequest* req,
                                            cv1::PreLiveMigrationResponse* out) {
  return Handle(ctx, "PreLiveMigration", true, out, [&] { return core_->PreLiveMigration(*req); });
}
grpc::Status AgentService::LiveMigration(grpc::ServerContext* ctx,
                                         const cv1::LiveMigrationRequest* req,
                                         cv1::LiveMigrationResponse* out) {
  return Handle(ctx, "LiveMigration", true, out, [&] { return core_->LiveMigration(*req); });
}
grpc::Status AgentService::GetMigrationProgress(grpc::ServerContext* ctx,
                                                const cv1::GetMigrationProgressRequest* req,
                                                cv1::MigrationProgressReport* out) {
  return Handle(ctx, "GetMigrationProgress", false, out,
                [&] { return core_->GetMigrationProgress(*req); });
}
grpc::Status AgentService::WatchMigrationProgress(
    grpc::ServerContext* ctx, const cv1::WatchMigrationProgressRequest* req,
    grpc::ServerWriter<cv1::MigrationProgressReport>* writer) {
  const absl::Duration interval = absl::Milliseconds(
      req->interval_ms() > 0 ? std::max<uint32_t>(req->interval_ms(), 100) : 1000);
  cv1::GetMigrationProgressRequest get;
  get.set_migration_id(req->migration_id());
  get.set_instance_uuid(req->instance_uuid());
  while (!ctx->IsCancelled()) {
    auto r = core_->GetMigrationProgress(get);
    if (!r.ok()) return ToGrpcStatus(r.status());
    if (!writer->Write(*r)) break;
    if (r->state() != cv1::TRANSFER_STATE_RUNNING) break;
    absl::SleepFor(interval);
  }
  return grpc::Status::OK;
}
grpc::Status AgentService::AbortLiveMigration(grpc::ServerContext* ctx,
                                              const cv1::AbortLiveMigrationRequest* req,
                                              cv1::AbortLiveMigrationResponse* out) {
  return Handle(ctx, "AbortLiveMigration", true, out,
                [&] { return core_->AbortLiveMigration(*req); });
}
grpc::Status AgentService::ForceCompleteLiveMigration(
    grpc::ServerContext* ctx, const cv1::ForceCompleteLiveMigrationRequest* req,
    cv1::ForceCompleteLiveMigrationResponse* out) {
  return Handle(ctx, "ForceCompleteLiveMigration", true, out,
                [&] { return core_->ForceCompleteLiveMigration(*req); });
}
grpc::Status AgentService::PostLiveMigration(grpc::ServerContext* ctx,
                                             const cv1::PostLiveMigrationRequest* req,
                                             cv1::PostLiveMigrationResponse* out) {
  return Handle(ctx, "PostLiveMigration", true, out,
                [&] { return core_->PostLiveMigration(*req); });
}
grpc::Status AgentService::PostLiveMigrationAtDestination(
    grpc::ServerContext* ctx, const cv1::PostLiveMigrationAtDestinationRequest* req,
    cv1::PostLiveMigrationAtDestinationResponse* out) {
  return Handle(ctx, "PostLiveMigrationAtDestination", true, out,
                [&] { return core_->PostLiveMigrationAtDestination(*req); });
}
grpc::Status AgentService::RollbackLiveMigration(grpc::ServerContext* ctx,
                                                 const cv1::RollbackLiveMigrationRequest* req,
                                                 cv1::RollbackLiveMigrationResponse* out) {
  return Handle(ctx, "RollbackLiveMigration", true, out,
                [&] { return core_->RollbackLiveMigration(*req); });
}
grpc::Status AgentService::RollbackLiveMigrationAtDestination(
    grpc::ServerContext* ctx, const cv1::RollbackLiveMigrationAtDestinationRequest* req,
    cv1::RollbackLiveMigrationAtDestinationResponse* out) {
  return Handle(ctx, "RollbackLiveMigrationAtDestination", true, out,
                [&] { return core_->RollbackLiveMigrationAtDestination(*req); });
}

}  // namespace livemig::agent
