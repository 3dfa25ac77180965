#include "scheduler/services.h"

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/migration_status.h"
#include "common/status_map.h"
#include "common/tls.h"
#include "common/validate.h"
#include "db/pg_stores.h"
#include "scheduler/convert.h"

namespace livemig::sched {
namespace {

// A host report must commit at least this long before its sender's deadline.
constexpr absl::Duration kReportCommitMargin = absl::Milliseconds(250);

template <typename Resp, typename Fn>
grpc::Status Reply(Resp* out, Fn fn) {
  auto r = fn();
  if (!r.ok()) return ToGrpcStatus(r.status());
  *out = std::move(r).value();
  return grpc::Status::OK;
}

}  // namespace

absl::StatusOr<Principal> SchedulerApiService::Auth(grpc::ServerContext* ctx, bool mutating,
                                                    const char* op) const {
  std::string header;
  auto md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) header.assign(it->second.data(), it->second.size());
  return tokens_->Check(header, mutating, op);
}

#define LIVEMIG_AUTH(mutating, op)                              \
  auto principal = Auth(ctx, mutating, op);                     \
  if (!principal.ok()) return ToGrpcStatus(principal.status()); \
  const std::string caller = principal->name;                   \
  (void)caller

grpc::Status SchedulerApiService::LiveMigrate(grpc::ServerContext* ctx,
                                              const sv1::LiveMigrateRequest* r,
                                              sv1::LiveMigrateResponse* out) {
  LIVEMIG_AUTH(true, "LiveMigrate");
  return Reply(out, [&] { return core_->LiveMigrate(*r, caller); });
}
grpc::Status SchedulerApiService::GetMigration(grpc::ServerContext* ctx,
                                               const sv1::GetMigrationRequest* r,
                                               sv1::Migration* out) {
  LIVEMIG_AUTH(false, "GetMigration");
  return Reply(out, [&] { return core_->GetMigration(r->migration_id()); });
}
grpc::Status SchedulerApiService::ListMigrations(grpc::ServerContext* ctx,
                                                 const sv1::ListMigrationsRequest* r,
                                                 sv1::ListMigrationsResponse* out) {
  LIVEMIG_AUTH(false, "ListMigrations");
  return Reply(out, [&] { return core_->ListMigrations(*r); });
}
absl::Status SchedulerApiService::AcquireWatch(const std::string& who) {
  absl::MutexLock l(&watch_mu_);
  int& mine = watches_[who];
  if (mine >= watch_.per_principal) {
    return absl::ResourceExhaustedError(
        absl::StrCat("WatchMigration: '", who, "' already has ", watch_.per_principal,
                     " streams open, the most one caller may hold (--watch-max-streams ",
                     watch_.per_principal, "): close one, or poll GetMigration"));
  }
  if (watches_total_ >= watch_.total) {
    if (mine == 0) watches_.erase(who);
    return absl::ResourceExhaustedError(
        absl::StrCat("WatchMigration: ", watch_.total,
                     " streams are open, the most the scheduler serves at once "
                     "(--watch-max-streams-total ",
                     watch_.total, "): retry later, or poll GetMigration"));
  }
  ++mine;
  ++watches_total_;
  return absl::OkStatus();
}

void SchedulerApiService::ReleaseWatch(const std::string& who) {
  absl::MutexLock l(&watch_mu_);
  auto it = watches_.find(who);
  if (it != watches_.end() && --it->second <= 0) watches_.erase(it);
  --watches_total_;
}

grpc::Status SchedulerApiService::WatchMigration(grpc::ServerContext* ctx,
                                                 const sv1::WatchMigrationRequest* r,
                                                 grpc::ServerWriter<sv1::Migration>* writer) {
  LIVEMIG_AUTH(false, "WatchMigration");
  if (absl::Status s = AcquireWatch(caller); !s.ok()) return ToGrpcStatus(s);
  absl::Cleanup release = [&] { ReleaseWatch(caller); };
  // Snapshots at most every `interval`; the migration is read at least every second, so that
  // its end (and a cancelled call) ends the stream within a second whatever interval was asked.
  const absl::Duration interval = absl::Milliseconds(
      r->min_interval_ms() == 0 ? 500 : std::max<uint32_t>(r->min_interval_ms(), 100));
  const absl::Duration poll = std::min(interval, absl::Seconds(1));
  std::string last;
  absl::Time last_write = absl::InfinitePast();
  while (!ctx->IsCancelled()) {
    auto m = core_->GetMigration(r->migration_id(), r->include_events());
    if (!m.ok()) return ToGrpcStatus(m.status());
    // The stream ends with the migration: completed, failed, cancelled, and error too (the
    // reconciler may still resolve an `error`; a client re-watches to follow that).
    auto status = FromProtoStatus(m->status());
    const bool ends = !status.ok() || IsTerminal(*status) || *status == MigrationStatus::kError;
    std::string now = m->SerializeAsString();
    if (now != last && (ends || absl::Now() - last_write >= interval)) {
      if (!writer->Write(*m)) break;
      last = std::move(now);
      last_write = absl::Now();
    }
    if (ends) break;
    absl::SleepFor(poll);
  }
  return grpc::Status::OK;
}
grpc::Status SchedulerApiService::AbortMigration(grpc::ServerContext* ctx,
                                                 const sv1::AbortMigrationRequest* r,
                                                 sv1::AbortMigrationResponse* out) {
  LIVEMIG_AUTH(true, "AbortMigration");
  return Reply(out, [&] { return core_->AbortMigration(*r, caller); });
}
grpc::Status SchedulerApiService::ForceCompleteMigration(
    grpc::ServerContext* ctx, const sv1::ForceCompleteMigrationRequest* r,
    sv1::ForceCompleteMigrationResponse* out) {
  LIVEMIG_AUTH(true, "ForceCompleteMigration");
  return Reply(out, [&] { return core_->ForceCompleteMigration(*r, caller); });
}
grpc::Status SchedulerApiService::ResolveMigration(grpc::ServerContext* ctx,
                                                   const sv1::ResolveMigrationRequest* r,
                                                   sv1::ResolveMigrationResponse* out) {
  LIVEMIG_AUTH(true, "ResolveMigration");
  return Reply(out, [&] { return core_->ResolveMigration(*r, caller); });
}
grpc::Status SchedulerApiService::CheckMigration(grpc::ServerContext* ctx,
                                                 const sv1::CheckMigrationRequest* r,
                                                 sv1::CheckMigrationResponse* out) {
  LIVEMIG_AUTH(false, "CheckMigration");
  return Reply(out, [&] { return core_->CheckMigration(*r); });
}
grpc::Status SchedulerApiService::ListHosts(grpc::ServerContext* ctx,
                                            const sv1::ListHostsRequest* r,
                                            sv1::ListHostsResponse* out) {
  LIVEMIG_AUTH(false, "ListHosts");
  return Reply(out, [&] { return core_->ListHosts(*r); });
}
grpc::Status SchedulerApiService::GetHost(grpc::ServerContext* ctx, const sv1::GetHostRequest* r,
                                          sv1::Host* out) {
  LIVEMIG_AUTH(false, "GetHost");
  return Reply(out, [&] { return core_->GetHost(r->hostname()); });
}
grpc::Status SchedulerApiService::SetHostEnabled(grpc::ServerContext* ctx,
                                                 const sv1::SetHostEnabledRequest* r,
                                                 sv1::Host* out) {
  LIVEMIG_AUTH(true, "SetHostEnabled");
  return Reply(out, [&] { return core_->SetHostEnabled(*r, caller); });
}
grpc::Status SchedulerApiService::EvacuateHost(grpc::ServerContext* ctx,
                                               const sv1::EvacuateHostRequest* r,
                                               sv1::Evacuation* out) {
  LIVEMIG_AUTH(true, "EvacuateHost");
  return Reply(out, [&] { return core_->EvacuateHost(*r, caller); });
}
grpc::Status SchedulerApiService::GetEvacuation(grpc::ServerContext* ctx,
                                                const sv1::GetEvacuationRequest* r,
                                                sv1::Evacuation* out) {
  LIVEMIG_AUTH(false, "GetEvacuation");
  return Reply(out, [&] { return core_->GetEvacuation(r->evacuation_id()); });
}
grpc::Status SchedulerApiService::ListEvacuations(grpc::ServerContext* ctx,
                                                  const sv1::ListEvacuationsRequest* r,
                                                  sv1::ListEvacuationsResponse* out) {
  LIVEMIG_AUTH(false, "ListEvacuations");
  return Reply(out, [&] { return core_->ListEvacuations(*r); });
}
grpc::Status SchedulerApiService::CancelEvacuation(grpc::ServerContext* ctx,
                                                   const sv1::CancelEvacuationRequest* r,
                                                   sv1::Evacuation* out) {
  LIVEMIG_AUTH(true, "CancelEvacuation");
  return Reply(out, [&] { return core_->CancelEvacuation(*r, caller); });
}
grpc::Status SchedulerApiService::ListInstances(grpc::ServerContext* ctx,
                                                const sv1::ListInstancesRequest* r,
                                                sv1::ListInstancesResponse* out) {
  LIVEMIG_AUTH(false, "ListInstances");
  return Reply(out, [&] { return core_->ListInstances(*r); });
}
grpc::Status SchedulerApiService::GetInstance(grpc::ServerContext* ctx,
                                              const sv1::GetInstanceRequest* r,
                                              sv1::Instance* out) {
  LIVEMIG_AUTH(false, "GetInstance");
  return Reply(out, [&] { return core_->GetInstance(r->instance_uuid()); });
}

grpc::Status HostRegistryService::ReportHost(grpc::ServerContext* ctx,
                                             const rv1::ReportHostRequest* r,
                                             rv1::ReportHostResponse* out) {
  const auto& inv = r->inventory();
  if (!db::IsValidHostname(inv.hostname())) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("report for an invalid host name '", inv.hostname(), "'")));
  }
  if (IsReservedHostname(inv.hostname())) {
    LogWarning("refused a report for the reserved host name '%s'", inv.hostname());
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "'", inv.hostname(),
        "' is reserved for the scheduler's identity and may not be a host's name: name the host "
        "by its hostname (deploy/pki.sh refuses to issue a host certificate with this name)")));
  }
  if (inv.report_seq() == 0) {
    return ToGrpcStatus(absl::InvalidArgumentError("report_seq must be positive"));
  }
  const std::string who = PeerIdentity(*ctx);
  if (!insecure_ && who != inv.hostname()) {
    LogWarning("refused a report for %s from identity '%s'", inv.hostname(), who);
    return ToGrpcStatus(absl::PermissionDeniedError(
        absl::StrCat("identity '", who, "' may not report for host ", inv.hostname(),
                     ": an agent reports only for its own host (certificate CN = hostname)")));
  }
  db::HostReport report = ReportFromInventory(inv);
  // Applied only if it commits while the agent still waits for the answer (with a margin for
  // the commit and the reply): a report the agent counted as failed must not move anything.
  if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
    report.apply_before = absl::FromChrono(ctx->deadline()) - kReportCommitMargin;
  }
  auto res = hosts_->ApplyReport(report);
  if (!res.ok()) return ToGrpcStatus(res.status());
  out->set_applied(res->accepted);
  out->set_accepted_report_seq(static_cast<uint64_t>(res->seq));
  *out->mutable_server_time() = ToProtoTime(absl::Now());
  out->set_next_report_interval_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(report_interval_)));
  return grpc::Status::OK;
}

}  // namespace livemig::sched
