// Size: ApiCore (scheduler/api_core.h), the one API behind gRPC, REST and Nova: the migration
// requests and their validation, abort, force-complete, resolve, hosts, instances and the
// metrics text. Evacuations are validated here and driven by the Evacuator (evacuator.h).
#include "scheduler/api_core.h"

#include <algorithm>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/validate.h"
#include "db/pg_stores.h"
#include "google/protobuf/util/json_util.h"
#include "scheduler/api_names.h"
#include "scheduler/checks_registry.h"
#include "scheduler/convert.h"
#include "scheduler/prechecks.h"

namespace livemig::sched {
namespace {

// Lists (scheduler.proto): page_size 0 = 50; at most 1000, larger values are lowered to 1000.
int PageSize(uint32_t requested) {
  if (requested == 0) return 50;
  return static_cast<int>(std::min<uint32_t>(requested, 1000));
}

// Free-text reasons (AbortMigrationRequest.reason): at most this many characters.
constexpr size_t kMaxReasonLength = 255;

bool CapsAllow(const db::HostRecord& h, bool (v1::BackendCapabilities::*has)() const) {
  v1::BackendCapabilities c;
  google::protobuf::util::JsonParseOptions p;
  p.ignore_unknown_fields = true;
  (void)google::protobuf::util::JsonStringToMessage(h.report.capabilities_json, &c, p);
  return (c.*has)();
}

}  // namespace

ApiCore::ApiCore(db::MigrationStore* migrations, db::HostStore* hosts, db::InstanceStore* instances,
                 db::EvacuationStore* evacuations, Orchestrator* orchestrator,
                 db::EvacuationStore* evacuation_leases)
    : migrations_(migrations),
      hosts_(hosts),
      instances_(instances),
      orchestrator_(orchestrator),
      evacuator_(hosts, instances, evacuations, evacuation_leases ? evacuation_leases : evacuations,
                 orchestrator,
                 [this](const sv1::LiveMigrateRequest& r, const std::string& evacuation_uuid) {
                   return LiveMigrateFor(r, "", evacuation_uuid);
                 }) {}

std::string ApiCore::Who(const std::string& caller, const std::string& requester) const {
  std::string who = caller.empty() ? "anonymous" : caller;
  if (!requester.empty() && requester != caller) absl::StrAppend(&who, " [", requester, "]");
  return who;
}

absl::Status ApiCore::ValidateOptions(const v1::MigrationOptions& o) {
  if (o.has_completion_timeout_s() && o.completion_timeout_s() > 7 * 24 * 3600) {
    return absl::InvalidArgumentError(absl::StrCat("completion timeout ", o.completion_timeout_s(),
                                                   " s is longer than a week; use 0 for none"));
  }
  if (o.has_max_downtime_ms() && (o.max_downtime_ms() < 1 || o.max_downtime_ms() > 600000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max downtime must be 1 to 600000 ms, got ", o.max_downtime_ms()));
  }
  if (o.has_bandwidth_mib_s() && o.bandwidth_mib_s() > 1000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("bandwidth ", o.bandwidth_mib_s(), " MiB/s is not plausible"));
  }
  if (o.has_downtime_steps() && (o.downtime_steps() < 1 || o.downtime_steps() > 1000)) {
    return absl::InvalidArgumentError("downtime steps must be 1 to 1000");
  }
  return absl::OkStatus();
}

absl::StatusOr<sv1::LiveMigrateResponse> ApiCore::LiveMigrate(const sv1::LiveMigrateRequest& r,
                                                              const std::string& caller) {
  return LiveMigrateFor(r, caller, "");
}

absl::StatusOr<sv1::LiveMigrateResponse> ApiCore::LiveMigrateFor(
    const sv1::LiveMigrateRequest& r, const std::string& caller,
    const std::string& evacuation_uuid) {
  if (!db::IsValidUuid(r.instance_uuid())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "instance '", r.instance_uuid(), "' is not a UUID (8-4-4-4-12 hexadecimal digits)"));
  }
  if (!r.destination().empty() && !db::IsValidHostname(r.destination())) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination '", r.destination(), "' is not a valid host name"));
  }
  RETURN_IF_ERROR(db::CheckRequestId("request_id", r.request_id()));
  RETURN_IF_ERROR(ValidateOptions(r.options()));
  sv1::LiveMigrateResponse resp;
  if (r.dry_run()) {
    sv1::CheckMigrationRequest c;
    c.set_instance_uuid(r.instance_uuid());
    c.set_destination(r.destination());
    *c.mutable_options() = r.options();
    ASSIGN_OR_RETURN(*resp.mutable_check(), CheckMigration(c));
    return resp;
  }
  // A retried request returns its migration, whatever happened since.
  if (!r.request_id().empty()) {
    auto existing = migrations_->FindByRequestId(r.request_id());
    if (existing.ok()) {
      if (existing->instance_uuid != r.instance_uuid()) {
        return absl::InvalidArgumentError(
            absl::StrCat("request id '", r.request_id(), "' was used for instance ",
                         existing->instance_uuid, ": use a new request id"));
      }
      ASSIGN_OR_RETURN(*resp.mutable_migration(), GetMigration(existing->uuid));
      resp.set_existing(true);
      return resp;
    }
    if (existing.status().code() != absl::StatusCode::kNotFound) return existing.status();
  }
  // A concurrent request with the same request id may have claimed the instance first: then this
  // one is its retry and answers with that migration, not ABORTED (found by the fault tests).
  auto same_request = [&]() -> std::optional<sv1::LiveMigrateResponse> {
    if (r.request_id().empty()) return std::nullopt;
    auto existing = migrations_->FindByRequestId(r.request_id());
    if (!existing.ok() || existing->instance_uuid != r.instance_uuid()) return std::nullopt;
    auto m = GetMigration(existing->uuid);
    if (!m.ok()) return std::nullopt;
    sv1::LiveMigrateResponse again;
    *again.mutable_migration() = *std::move(m);
    again.set_existing(true);
    return again;
  };
  ASSIGN_OR_RETURN(db::InstanceRecord inst, instances_->GetInstance(r.instance_uuid()));
  // The registry's request checks (checks_registry.h, docs/DESIGN.md § Guards): the instance's;
  // an option the source's hypervisor cannot honour (libxl: bandwidth, max downtime, post-copy,
  // ...) is refused now, with the reason, rather than accepted and failed by the pre-checks; a
  // named destination's.
  CheckContext ctx{inst, nullptr, nullptr, r.options()};
  if (Refusal no = RefuseRequest(CheckSubject::kInstance, ctx); !no.status.ok()) {
    if (no.instance_busy) {
      if (auto again = same_request()) return *again;
    }
    return no.status;
  }
  const absl::Duration down = orchestrator_->options().service_down_time;
  absl::StatusOr<db::HostRecord> src = hosts_->GetHost(inst.host, down);
  if (src.ok()) ctx.src = &*src;
  if (Refusal no = RefuseRequest(CheckSubject::kSource, ctx); !no.status.ok()) return no.status;
  if (!r.destination().empty()) {
    if (r.destination() == inst.host) {
      return absl::InvalidArgumentError(absl::StrCat(
          "destination ", r.destination(), " is the instance's current host: choose another"));
    }
    ASSIGN_OR_RETURN(db::HostRecord dst, hosts_->GetHost(r.destination(), down));
    ctx.dst = &dst;
    if (Refusal no = RefuseRequest(CheckSubject::kDestination, ctx); !no.status.ok()) {
      return no.status;
    }
  }
  db::NewMigration nm;
  if (!r.request_id().empty()) nm.request_id = r.request_id();
  if (!evacuation_uuid.empty()) nm.evacuation_uuid = evacuation_uuid;
  nm.instance_uuid = inst.uuid;
  nm.dest_host = r.destination();
  nm.live = r.options().mode() != v1::MIGRATION_MODE_OFFLINE;
  nm.block_migration = r.options().block_migration() == v1::BLOCK_MIGRATION_YES  ? "yes"
                       : r.options().block_migration() == v1::BLOCK_MIGRATION_NO ? "no"
                                                                                 : "auto";
  nm.options_json = OptionsToJson(r.options());
  nm.memory_claim_mib = inst.memory_mib;
  nm.requested_by = Who(caller, r.requester());
  nm.owner = orchestrator_->options().scheduler_id;
  nm.lease = orchestrator_->options().lease;
  auto create = migrations_->CreateMigration(nm);
  if (create.status().code() == absl::StatusCode::kAborted) {
    if (auto again = same_request()) return *again;
  }
  ASSIGN_OR_RETURN(db::CreateMigrationResult created, std::move(create));
  if (created.created) {
    LogInfo("migration=%d instance=%s accepted: %s -> %s, requested by %s", created.migration.id,
            inst.uuid, inst.host,
            r.destination().empty() ? "(scheduler's choice)" : r.destination(), nm.requested_by);
    orchestrator_->Launch(created.migration, inst);
  }
  *resp.mutable_migration() = ToProtoMigration(created.migration);
  resp.set_existing(!created.created);
  return resp;
}

absl::StatusOr<db::MigrationRecord> ApiCore::FindMigration(const std::string& id) {
  int64_t number = 0;
  if (absl::SimpleAtoi(id, &number) && number > 0) return migrations_->GetMigration(number);
  if (db::IsValidUuid(id)) return migrations_->GetMigrationByUuid(id);
  return absl::InvalidArgumentError(
      absl::StrCat("migration id '", id, "' is neither a migration number nor a migration UUID"));
}

absl::StatusOr<sv1::Migration> ApiCore::GetMigration(const std::string& id, bool include_events) {
  ASSIGN_OR_RETURN(db::MigrationRecord m, FindMigration(id));
  std::vector<db::MigrationEvent> events;
  if (include_events) {
    ASSIGN_OR_RETURN(events, migrations_->ListEvents(m.id));
  }
  return ToProtoMigration(m, events);
}

absl::StatusOr<sv1::ListMigrationsResponse> ApiCore::ListMigrations(
    const sv1::ListMigrationsRequest& r) {
  db::MigrationFilter f;
  RETURN_IF_ERROR(CheckEnumFilter("statuses", r.statuses(), v1::MigrationStatus_descriptor()));
  for (int s : r.statuses()) {
    ASSIGN_OR_RETURN(MigrationStatus st, FromProtoStatus(static_cast<v1::MigrationStatus>(s)));
    f.statuses.push_back(st);
  }
  if (!r.host().empty() && !db::IsValidHostname(r.host())) {
    return absl::InvalidArgumentError(
        absl::StrCat("host filter '", r.host(), "' is not a valid host name"));
  }
  if (!r.instance_uuid().empty() && !db::IsValidUuid(r.instance_uuid())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "instance filter '", r.instance_uuid(), "' is not a UUID (8-4-4-4-12 hexadecimal digits)"));
  }
  f.host = r.host();
  f.instance_uuid = r.instance_uuid();
  if (r.has_created_after()) f.created_after = FromProtoTime(r.created_after());
  if (r.has_created_before()) f.created_before = FromProtoTime(r.created_before());
  if (f.created_after && f.created_before && *f.created_after > *f.created_before) {
    return absl::InvalidArgumentError("created_after is after created_before: nothing can match");
  }
  f.page_size = PageSize(r.page_size());
  f.page_token = r.page_token();
  ASSIGN_OR_RETURN(db::MigrationPage page, migrations_->ListMigrations(f));
  sv1::ListMigrationsResponse resp;
  for (const auto& m : page.migrations) {
    std::vector<db::MigrationEvent> events;
    if (r.include_events()) {
      ASSIGN_OR_RETURN(events, migrations_->ListEvents(m.id));
    }
    *resp.add_migrations() = ToProtoMigration(m, events);
  }
  resp.set_next_page_token(page.next_page_token);
  return resp;
}

absl::StatusOr<sv1::AbortMigrationResponse> ApiCore::AbortMigration(
    const sv1::AbortMigrationRequest& r, const std::string& caller) {
  ASSIGN_OR_RETURN(db::MigrationRecord m, FindMigration(r.migration_id()));
  if (IsTerminal(m.status)) {
    return absl::FailedPreconditionError(
        absl::StrCat("migration ", m.id, " is already ", ToString(m.status), ": nothing to abort"));
  }
  if (IsPastPointOfNoReturn(m.status) || m.status == MigrationStatus::kError) {
    return absl::FailedPreconditionError(absl::StrCat(
        "migration ", m.id, " is ", ToString(m.status),
        ": the domain may already run on the destination only, so it cannot be aborted"));
  }
  if (m.status == MigrationStatus::kRunning) {
    ASSIGN_OR_RETURN(db::HostRecord src,
                     hosts_->GetHost(m.source_host, orchestrator_->options().service_down_time));
    if (!CapsAllow(src, &v1::BackendCapabilities::supports_abort)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "migration ", m.id, " is running on ", src.report.hypervisor_type, " (", m.source_host,
          "), which cannot abort a running transfer (libxl has no job abort): "
          "wait for it to finish"));
    }
  }
  if (r.reason().size() > kMaxReasonLength) {
    return absl::InvalidArgumentError(absl::StrCat("field 'reason' must be at most ",
                                                   kMaxReasonLength, " characters, got ",
                                                   r.reason().size()));
  }
  ASSIGN_OR_RETURN(db::MigrationRecord after,
                   migrations_->RequestAbort(m.id, Who(caller, r.requester()), r.reason()));
  orchestrator_->Kick();
  sv1::AbortMigrationResponse resp;
  *resp.mutable_migration() = ToProtoMigration(after);
  return resp;
}

absl::StatusOr<sv1::ForceCompleteMigrationResponse> ApiCore::ForceCompleteMigration(
    const sv1::ForceCompleteMigrationRequest& r, const std::string& caller) {
  ASSIGN_OR_RETURN(db::MigrationRecord m, FindMigration(r.migration_id()));
  if (m.status != MigrationStatus::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("migration ", m.id, " is ", ToString(m.status),
                     ": only a running migration can be forced to complete"));
  }
  ASSIGN_OR_RETURN(db::HostRecord src,
                   hosts_->GetHost(m.source_host, orchestrator_->options().service_down_time));
  if (!CapsAllow(src, &v1::BackendCapabilities::supports_force_complete)) {
    return absl::FailedPreconditionError(absl::StrCat(
        m.source_host, " runs ", src.report.hypervisor_type,
        ", which cannot force a running migration to complete: wait for it to finish"));
  }
  ASSIGN_OR_RETURN(db::MigrationRecord after,
                   migrations_->RequestForceComplete(m.id, Who(caller, r.requester())));
  sv1::ForceCompleteMigrationResponse resp;
  *resp.mutable_migration() = ToProtoMigration(after);
  return resp;
}

namespace {

// The resolve event of a migration (step "resolve"), if it has one.
const db::MigrationEvent* ResolveEvent(const std::vector<db::MigrationEvent>& events) {
  for (const auto& e : events) {
    if (e.step == v1::MIGRATION_STEP_RESOLVE && e.kind == "result") return &e;
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<sv1::ResolveMigrationResponse> ApiCore::ResolveMigration(
    const sv1::ResolveMigrationRequest& r, const std::string& caller) {
  if (r.reason().size() > kMaxReasonLength) {
    return absl::InvalidArgumentError(absl::StrCat("field 'reason' must be at most ",
                                                   kMaxReasonLength, " characters, got ",
                                                   r.reason().size()));
  }
  if (r.requester().size() > kMaxReasonLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'requester' must be at most ", kMaxReasonLength, " characters"));
  }
  ASSIGN_OR_RETURN(db::MigrationRecord m, FindMigration(r.migration_id()));
  const std::string& on = r.running_on();
  if (on.empty() || (on != m.source_host && on != m.dest_host)) {
    return absl::InvalidArgumentError(
        absl::StrCat("running_on '", on, "' is neither the source (", m.source_host,
                     ") nor the destination (", m.dest_host.empty() ? "none" : m.dest_host,
                     ") of migration ", m.id, ": name the host you see the guest running on"));
  }
  auto answer =
      [&](const db::MigrationRecord& rec) -> absl::StatusOr<sv1::ResolveMigrationResponse> {
    ASSIGN_OR_RETURN(auto events, migrations_->ListEvents(rec.id));
    sv1::ResolveMigrationResponse resp;
    *resp.mutable_migration() = ToProtoMigration(rec, events);
    return resp;
  };
  // Already resolved: the same answer (no agent is asked again), or a refusal naming the host.
  auto resolved = [&](const db::MigrationRecord& rec)
      -> std::optional<absl::StatusOr<sv1::ResolveMigrationResponse>> {
    if (!IsTerminal(rec.status)) return std::nullopt;
    auto events = migrations_->ListEvents(rec.id);
    if (!events.ok()) return absl::StatusOr<sv1::ResolveMigrationResponse>(events.status());
    const db::MigrationEvent* e = ResolveEvent(*events);
    if (e == nullptr) {
      return absl::StatusOr<sv1::ResolveMigrationResponse>(absl::FailedPreconditionError(
          absl::StrCat("migration ", rec.id, " is already ", ToString(rec.status),
                       ": nothing to resolve (only a migration in error is resolved)")));
    }
    if (e->host != on) {
      return absl::StatusOr<sv1::ResolveMigrationResponse>(absl::FailedPreconditionError(
          absl::StrCat("migration ", rec.id, " was already resolved as running on ", e->host, " (",
                       e->detail, "), not on ", on)));
    }
    return answer(rec);
  };
  if (auto done = resolved(m)) return *std::move(done);
  if (m.status != MigrationStatus::kError) {
    return absl::FailedPreconditionError(absl::StrCat(
        "migration ", m.id, " is ", ToString(m.status),
        ": the scheduler still drives it; only a migration in error is resolved. Wait for it "
        "to finish (cloudctl migration-show), or abort it (cloudctl migration-abort) while it "
        "can be aborted"));
  }
  ASSIGN_OR_RETURN(auto where, orchestrator_->DescribeDomainOnHosts(m));
  std::vector<std::string> running, said;
  for (const auto& w : where) {
    if (w.runs) running.push_back(w.host);
    said.push_back(absl::StrCat(w.host, ": ", w.state));
  }
  const std::string reports = absl::StrCat("(", absl::StrJoin(said, "; "), ")");
  const std::string nothing = "; nothing was changed";
  if (running.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "instance ", m.instance_uuid, " runs on both ", absl::StrJoin(running, " and "), " ",
        reports, ": destroy or pause one copy first, then resolve naming the other", nothing));
  }
  if (running.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("instance ", m.instance_uuid, " runs on neither host ", reports,
                     ": start or resume the copy to keep, then resolve naming its host", nothing));
  }
  if (running[0] != on) {
    return absl::FailedPreconditionError(absl::StrCat("instance ", m.instance_uuid, " runs on ",
                                                      running[0], ", not ", on, " ", reports,
                                                      ": check the hosts again", nothing));
  }
  // A paused copy left on the other host would take the instance back: the registry records an
  // instance where a report shows it running, paused or blocked once no migration holds it.
  for (const auto& w : where) {
    if (w.host != on && w.present && w.state == "paused") {
      return absl::FailedPreconditionError(
          absl::StrCat("instance ", m.instance_uuid, " runs on ", on, " but ", w.host,
                       " still holds a paused copy ", reports, ": once resolved, ", w.host,
                       "'s reports would record the instance there again; destroy the copy on ",
                       w.host, " (virsh destroy and undefine), then resolve", nothing));
    }
  }
  const std::string who = Who(caller, r.requester());
  std::string detail = absl::StrCat("resolved by ", who, ": runs on ", on, ": ",
                                    r.reason().empty() ? "no reason given" : r.reason());
  for (const auto& w : where) {
    if (w.host != on && w.present) {
      absl::StrAppend(&detail, "; ", w.host, " still holds a ", w.state,
                      " copy: destroy it by hand");
    }
  }
  db::MigrationEvent ev;
  ev.step = v1::MIGRATION_STEP_RESOLVE;
  ev.kind = "result";
  ev.outcome = "ok";
  ev.actor = who;
  ev.host = on;
  ev.detail = detail;
  ev.started_at = absl::Now();
  ev.finished_at = ev.started_at;
  ev.duration_ms = 0;
  const MigrationStatus to =
      on == m.dest_host ? MigrationStatus::kCompleted : MigrationStatus::kFailed;
  auto after = migrations_->ResolveError(
      m.id, to, on,
      absl::StrCat(m.failure_reason, m.failure_reason.empty() ? "" : " ", "(", detail, ")"), ev);
  if (after.status().code() == absl::StatusCode::kAborted) {
    // Another request (or the reconciler) moved it meanwhile: answer as for a second request.
    ASSIGN_OR_RETURN(db::MigrationRecord now, migrations_->GetMigration(m.id));
    if (auto done = resolved(now)) return *std::move(done);
    return after.status();
  }
  if (!after.ok()) return after.status();
  LogInfo("migration=%s number=%d instance=%s %s", m.uuid, m.id, m.instance_uuid, detail);
  return answer(*after);
}

absl::StatusOr<sv1::CheckMigrationResponse> ApiCore::CheckMigration(
    const sv1::CheckMigrationRequest& r) {
  if (!db::IsValidUuid(r.instance_uuid())) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance '", r.instance_uuid(), "' is not a UUID"));
  }
  RETURN_IF_ERROR(ValidateOptions(r.options()));
  return orchestrator_->CheckMigration(r, hosts_, instances_);  // the API's connections
}

absl::StatusOr<std::vector<sv1::Host>> ApiCore::ListAllHosts() {
  std::vector<sv1::Host> all;
  sv1::ListHostsRequest r;
  r.set_page_size(1000);
  do {
    ASSIGN_OR_RETURN(sv1::ListHostsResponse page, ListHosts(r));
    for (auto& h : *page.mutable_hosts()) all.push_back(std::move(h));
    r.set_page_token(page.next_page_token());
  } while (!r.page_token().empty());
  return all;
}

absl::StatusOr<sv1::ListHostsResponse> ApiCore::ListHosts(const sv1::ListHostsRequest& r) {
  // Paged in the database (by host name): a page costs the same with 10 or 10,000 hosts.
  db::HostFilter f;
  if (r.has_enabled()) f.enabled = r.enabled();
  if (r.has_up()) f.up = r.up();
  f.page_size = PageSize(r.page_size());
  f.page_token = r.page_token();
  ASSIGN_OR_RETURN(db::HostPage page,
                   hosts_->ListHostsPage(f, orchestrator_->options().service_down_time));
  sv1::ListHostsResponse resp;
  for (const auto& h : page.hosts) *resp.add_hosts() = ToProtoHost(h);
  resp.set_next_page_token(page.next_page_token);
  return resp;
}

absl::StatusOr<sv1::Host> ApiCore::GetHost(const std::string& hostname) {
  if (!db::IsValidHostname(hostname)) {
    return absl::InvalidArgumentError(absl::StrCat("'", hostname, "' is not a valid host name"));
  }
  ASSIGN_OR_RETURN(auto h, hosts_->GetHost(hostname, orchestrator_->options().service_down_time));
  return ToProtoHost(h);
}

absl::StatusOr<sv1::Host> ApiCore::SetHostEnabled(const sv1::SetHostEnabledRequest& r,
                                                  const std::string& caller) {
  if (!db::IsValidHostname(r.hostname())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", r.hostname(), "' is not a valid host name"));
  }
  if (!r.enabled() && r.reason().empty()) {
    return absl::InvalidArgumentError("disabling a host needs a reason (--reason)");
  }
  ASSIGN_OR_RETURN(auto h, hosts_->SetHostEnabled(r.hostname(), r.enabled(), r.reason(),
                                                  Who(caller, r.requester())));
  LogInfo("host %s %s by %s%s%s", r.hostname(), r.enabled() ? "enabled" : "disabled",
          Who(caller, r.requester()), r.reason().empty() ? "" : ": ", r.reason());
  return ToProtoHost(h);
}

absl::StatusOr<sv1::ListInstancesResponse> ApiCore::ListInstances(
    const sv1::ListInstancesRequest& r) {
  if (!r.host().empty() && !db::IsValidHostname(r.host())) {
    return absl::InvalidArgumentError(absl::StrCat("'", r.host(), "' is not a valid host name"));
  }
  // Paged and filtered in the database (by name, then UUID).
  db::InstanceFilter f;
  f.host = r.host();
  RETURN_IF_ERROR(CheckEnumFilter("states", r.states(), v1::DomainState_descriptor()));
  for (int s : r.states())
    f.power_states.push_back(DomainStateName(static_cast<v1::DomainState>(s)));
  if (r.has_missing()) f.missing = r.missing();
  if (r.has_migrating()) f.migrating = r.migrating();
  f.page_size = PageSize(r.page_size());
  f.page_token = r.page_token();
  ASSIGN_OR_RETURN(db::InstancePage page, instances_->ListInstancesPage(f));
  sv1::ListInstancesResponse resp;
  for (const auto& i : page.instances) *resp.add_instances() = ToProtoInstance(i);
  resp.set_next_page_token(page.next_page_token);
  return resp;
}

absl::StatusOr<sv1::Instance> ApiCore::GetInstance(const std::string& uuid) {
  ASSIGN_OR_RETURN(auto i, instances_->GetInstance(uuid));
  return ToProtoInstance(i);
}

namespace {
// Prometheus text format 0.0.4: one family's HELP and TYPE lines.
void Family(std::string* out, const char* name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

// A label value escaped as the text format wants (backslash, double quote, newline).
std::string LabelValue(const std::string& v) {
  return absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

// A histogram's series: `labels` is "" or `key="value",`; bounds in ms, reported in seconds.
void Histogram(std::string* out, const char* name, const std::string& labels,
               const db::MetricHistogram& h, const std::vector<int64_t>& bounds_ms) {
  for (size_t i = 0; i < bounds_ms.size(); ++i) {
    absl::StrAppend(out, name, "_bucket{", labels, "le=\"", bounds_ms[i] / 1000.0, "\"} ",
                    i < h.cumulative.size() ? h.cumulative[i] : 0, "\n");
  }
  const std::string braces =
      labels.empty() ? "" : absl::StrCat("{", labels.substr(0, labels.size() - 1), "}");
  absl::StrAppend(out, name, "_bucket{", labels, "le=\"+Inf\"} ", h.count, "\n", name, "_sum",
                  braces, " ", h.sum_ms / 1000.0, "\n", name, "_count", braces, " ", h.count, "\n");
}
}  // namespace

// Counters and histograms come from ReadMetrics (one statement: the rows not folded yet plus what
// the periodic fold and purges folded into metric_totals), so they never decrease and every
// replica reports the same; the gauges too. One read-only query per scrape (db/README.md), on
// the API pool: a scrape writes nothing.
absl::StatusOr<std::string> ApiCore::MetricsText() {
  ASSIGN_OR_RETURN(db::MigrationMetrics m,
                   migrations_->ReadMetrics(orchestrator_->options().service_down_time));
  std::string out;
  Family(&out, "livemig_migrations_total", "counter",
         "Migrations that ended, by outcome (the terminal status: completed, failed = rolled "
         "back, cancelled = aborted).");
  for (const char* outcome : {"completed", "failed", "cancelled"}) {
    auto it = m.ended.find(outcome);
    absl::StrAppend(&out, "livemig_migrations_total{outcome=\"", outcome, "\"} ",
                    it == m.ended.end() ? 0 : it->second, "\n");
  }
  Family(&out, "livemig_migrations_entered_error_total", "counter",
         "Migrations that entered error (the VM's location unproven; an operator or the "
         "reconciler resolves it).");
  absl::StrAppend(&out, "livemig_migrations_entered_error_total ", m.entered_error, "\n");
  Family(&out, "livemig_migrations_in_flight", "gauge",
         "Migrations not finished (error included), by status.");
  for (MigrationStatus st : AllMigrationStatuses()) {
    if (IsTerminal(st)) continue;
    auto it = m.in_flight.find(ToString(st));
    absl::StrAppend(&out, "livemig_migrations_in_flight{status=\"", ToString(st), "\"} ",
                    it == m.in_flight.end() ? 0 : it->second, "\n");
  }
  Family(&out, "livemig_migration_bytes_transferred_total", "counter",
         "Bytes the finished migrations transferred (the last count their hypervisor reported).");
  absl::StrAppend(&out, "livemig_migration_bytes_transferred_total ", m.bytes_transferred, "\n");
  Family(&out, "livemig_precheck_refusals_total", "counter",
         "Migrations a pre-check refused, by the check that refused them.");
  for (const auto& [check, n] : m.refusals) {
    absl::StrAppend(&out, "livemig_precheck_refusals_total{check=\"", LabelValue(check), "\"} ", n,
                    "\n");
  }
  int64_t two_copies = 0;
  auto tc = m.step_durations.find("two_running_copies");
  if (tc != m.step_durations.end()) two_copies = tc->second.count;
  Family(&out, "livemig_two_running_copies_detected_total", "counter",
         "Migrations whose rollback found the domain running on both hosts (the source's copy "
         "was paused; an operator decides).");
  absl::StrAppend(&out, "livemig_two_running_copies_detected_total ", two_copies, "\n");
  Family(&out, "livemig_step_duration_seconds", "histogram", "Duration of each migration step.");
  for (const auto& [step, h] : m.step_durations) {
    Histogram(&out, "livemig_step_duration_seconds",
              absl::StrCat("step=\"", LabelValue(step), "\","), h, db::StepDurationBoundsMs());
  }
  Family(&out, "livemig_migration_transfer_seconds", "histogram",
         "Transfer time of completed migrations (the hypervisor job's elapsed time).");
  Histogram(&out, "livemig_migration_transfer_seconds", "", m.transfer, db::TransferBoundsMs());
  Family(&out, "livemig_migration_downtime_seconds", "histogram",
         "Downtime of completed migrations as the hypervisor measured it; none recorded when it "
         "reports none (Xen's libxl).");
  Histogram(&out, "livemig_migration_downtime_seconds", "", m.downtime, db::DowntimeBoundsMs());
  Family(&out, "livemig_hosts", "gauge", "Hosts known to the scheduler by liveness (up, down).");
  for (const char* state : {"up", "down"}) {
    auto it = m.hosts.find(state);
    absl::StrAppend(&out, "livemig_hosts{state=\"", state, "\"} ",
                    it == m.hosts.end() ? 0 : it->second, "\n");
  }
  Family(&out, "livemig_hosts_disabled", "gauge",
         "Hosts disabled by an operator (no migration goes to them), up or down.");
  absl::StrAppend(&out, "livemig_hosts_disabled ", m.hosts_disabled, "\n");
  // Not from the database: this process's dry runs (each replica has its own cap).
  const Orchestrator::DryRunCounts dry = orchestrator_->DryRuns();
  Family(&out, "livemig_dry_runs_running", "gauge",
         "Dry runs (CheckMigration, live-migration --dry-run) running now in this scheduler.");
  absl::StrAppend(&out, "livemig_dry_runs_running ", dry.running, "\n");
  Family(&out, "livemig_dry_runs_running_max", "gauge",
         "The most dry runs that ran at once in this scheduler since it started (at most "
         "--dry-run-max-concurrent).");
  absl::StrAppend(&out, "livemig_dry_runs_running_max ", dry.most_running, "\n");
  Family(&out, "livemig_dry_runs_total", "counter",
         "Dry runs this scheduler was asked for since it started: run, or refused because "
         "--dry-run-max-concurrent were running.");
  absl::StrAppend(&out, "livemig_dry_runs_total{outcome=\"run\"} ", dry.admitted, "\n");
  absl::StrAppend(&out, "livemig_dry_runs_total{outcome=\"refused\"} ", dry.refused, "\n");
  return out;
}

// ---- evacuations -------------------------------------------------------------------------

absl::StatusOr<sv1::Evacuation> ApiCore::EvacuateHost(const sv1::EvacuateHostRequest& r,
                                                      const std::string& caller) {
  if (!db::IsValidHostname(r.hostname())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", r.hostname(), "' is not a valid host name"));
  }
  if (!r.destination().empty() && !db::IsValidHostname(r.destination())) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination '", r.destination(), "' is not a valid host name"));
  }
  RETURN_IF_ERROR(db::CheckRequestId("request_id", r.request_id()));
  RETURN_IF_ERROR(ValidateOptions(r.options()));
  if (r.max_parallel() > kMaxEvacuationParallel) {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'max_parallel' must be 0 (the default) to ", kMaxEvacuationParallel,
                     ", got ", r.max_parallel()));
  }
  return evacuator_.Evacuate(r, Who(caller, r.requester()));
}

absl::StatusOr<sv1::Evacuation> ApiCore::GetEvacuation(const std::string& id) {
  return evacuator_.Get(id);
}

absl::StatusOr<sv1::Evacuation> ApiCore::CancelEvacuation(const sv1::CancelEvacuationRequest& r,
                                                          const std::string& caller) {
  if (!db::IsValidUuid(r.evacuation_id())) {
    return absl::InvalidArgumentError(absl::StrCat("evacuation id '", r.evacuation_id(),
                                                   "' is not a UUID (expected 8-4-4-4-12 "
                                                   "hexadecimal digits)"));
  }
  if (r.reason().size() > kMaxReasonLength) {
    return absl::InvalidArgumentError(absl::StrCat("reason is ", r.reason().size(),
                                                   " characters long; at most ", kMaxReasonLength,
                                                   " are kept"));
  }
  if (r.requester().size() > kMaxReasonLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("requester is longer than ", kMaxReasonLength, " characters"));
  }
  return evacuator_.Cancel(r.evacuation_id(), Who(caller, r.requester()), r.reason());
}

absl::StatusOr<sv1::ListEvacuationsResponse> ApiCore::ListEvacuations(
    const sv1::ListEvacuationsRequest& r) {
  return evacuator_.List(r);
}

void ApiCore::ResumeEvacuations() { evacuator_.Resume(); }

int ApiCore::RunningEvacuations() { return evacuator_.Running(); }

}  // namespace livemig::sched
