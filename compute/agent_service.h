// The compute agent's gRPC service: thin handlers that authorize the caller, call AgentCore and
// translate the status back in one place (common/status_map.h).
//
// Authorization: with mutual TLS every caller has a certificate from the cluster CA (gRPC
// verifies it); step RPCs (checks, pre/live/post/rollback, abort, force-complete) also need the
// caller's identity (its certificate's common name) on the allow-list — the authenticated
// successor of Xen's xend-relocation-hosts-allow. Read-only RPCs need only the certificate.
#ifndef LIVEMIG_COMPUTE_AGENT_SERVICE_H_
#define LIVEMIG_COMPUTE_AGENT_SERVICE_H_

#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "compute/agent_core.h"
#include "proto/compute_agent.grpc.pb.h"

namespace livemig::agent {

// Identities allowed to drive migration steps. Thread-safe; replaced whole on reload.
class AllowList {
 public:
  // `insecure`: plaintext development mode, where callers have no identity: everyone is allowed.
  AllowList(std::vector<std::string> identities, bool insecure);
  void Replace(std::vector<std::string> identities);
  // PermissionDenied naming the identity and what to do; Unauthenticated without one.
  absl::Status Check(const std::string& identity, const std::string& rpc) const;
  std::vector<std::string> identities() const;

 private:
  mutable absl::Mutex mu_;
  std::set<std::string> ids_ ABSL_GUARDED_BY(mu_);
  const bool insecure_;
};

class AgentService final : public cv1::ComputeAgent::Service {
 public:
  AgentService(AgentCore* core, AllowList* allow) : core_(core), allow_(allow) {}

  grpc::Status GetHostInfo(grpc::ServerContext*, const cv1::GetHostInfoRequest*,
                           cv1::GetHostInfoResponse*) override;
  grpc::Status ListDomains(grpc::ServerContext*, const cv1::ListDomainsRequest*,
                           cv1::ListDomainsResponse*) override;
  grpc::Status DescribeInstance(grpc::ServerContext*, const cv1::DescribeInstanceRequest*,
                                cv1::DescribeInstanceResponse*) override;
  grpc::Status PauseInstance(grpc::ServerContext*, const cv1::PauseInstanceRequest*,
                             cv1::PauseInstanceResponse*) override;
  grpc::Status CheckCanLiveMigrateOnDest(grpc::ServerContext*,
                                         const cv1::CheckCanLiveMigrateOnDestRequest*,
                                         cv1::CheckCanLiveMigrateOnDestResponse*) override;
  grpc::Status CheckCanLiveMigrateOnSrc(grpc::ServerContext*,
                                        const cv1::CheckCanLiveMigrateOnSrcRequest*,
                                        cv1::CheckCanLiveMigrateOnSrcResponse*) override;
  grpc::Status CheckCanLiveMigrateOnDestCleanup(
      grpc::ServerContext*, const cv1::CheckCanLiveMigrateOnDestCleanupRequest*,
      cv1::CheckCanLiveMigrateOnDestCleanupResponse*) override;
  grpc::Status PreLiveMigration(grpc::ServerContext*, const cv1::PreLiveMigrationRequest*,
                                cv1::PreLiveMigrationResponse*) override;
  grpc::Status LiveMigration(grpc::ServerContext*, const cv1::LiveMigrationRequest*,
                             cv1::LiveMigrationResponse*) override;
  grpc::Status GetMigrationProgress(grpc::ServerContext*, const cv1::GetMigrationProgressRequest*,
                                    cv1::MigrationProgressReport*) override;
  grpc::Status WatchMigrationProgress(grpc::ServerContext*,
                                      const cv1::WatchMigrationProgressRequest*,
                                      grpc::ServerWriter<cv1::MigrationProgressReport>*) override;
  grpc::Status AbortLiveMigration(grpc::ServerContext*, const cv1::AbortLiveMigrationRequest*,
                                  cv1::AbortLiveMigrationResponse*) override;
  grpc::Status ForceCompleteLiveMigration(grpc::ServerContext*,
                                          const cv1::ForceCompleteLiveMigrationRequest*,
                                          cv1::ForceCompleteLiveMigrationResponse*) override;
  grpc::Status PostLiveMigration(grpc::ServerContext*, const cv1::PostLiveMigrationRequest*,
                                 cv1::PostLiveMigrationResponse*) override;
  grpc::Status PostLiveMigrationAtDestination(
      grpc::ServerContext*, const cv1::PostLiveMigrationAtDestinationRequest*,
      cv1::PostLiveMigrationAtDestinationResponse*) override;
  grpc::Status RollbackLiveMigration(grpc::ServerContext*, const cv1::RollbackLiveMigrationRequest*,
                                     cv1::RollbackLiveMigrationResponse*) override;
  grpc::Status RollbackLiveMigrationAtDestination(
      grpc::ServerContext*, const cv1::RollbackLiveMigrationAtDestinationRequest*,
      cv1::RollbackLiveMigrationAtDestinationResponse*) override;

 private:
  // The one path every unary handler takes: authorize, call, translate.
  template <typename Resp, typename Fn>
  grpc::Status Handle(grpc::ServerContext* ctx, const char* rpc, bool step, Resp* out, Fn fn);

  AgentCore* core_;
  AllowList* allow_;
};

}  // namespace livemig::agent

#endif  // LIVEMIG_COMPUTE_AGENT_SERVICE_H_
