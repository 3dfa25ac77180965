#include "scheduler/convert.h"

#include <cctype>

#include "common/step_name.h"
#include "google/protobuf/util/json_util.h"

namespace livemig::sched {

google::protobuf::Timestamp ToProtoTime(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t ns = absl::ToUnixNanos(t);
  ts.set_seconds(ns / 1000000000);
  ts.set_nanos(static_cast<int32_t>(ns % 1000000000));
  return ts;
}

absl::Time FromProtoTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

v1::MigrationStatus ToProtoStatus(MigrationStatus s) {
  switch (s) {
    case MigrationStatus::kAccepted:
      return v1::MIGRATION_STATUS_ACCEPTED;
    case MigrationStatus::kQueued:
      return v1::MIGRATION_STATUS_QUEUED;
    case MigrationStatus::kPreparing:
      return v1::MIGRATION_STATUS_PREPARING;
    case MigrationStatus::kRunning:
      return v1::MIGRATION_STATUS_RUNNING;
    case MigrationStatus::kRunningPostCopy:
      return v1::MIGRATION_STATUS_RUNNING_POSTCOPY;
    case MigrationStatus::kPostMigrating:
      return v1::MIGRATION_STATUS_POST_MIGRATING;
    case MigrationStatus::kCompleted:
      return v1::MIGRATION_STATUS_COMPLETED;
    case MigrationStatus::kFailed:
      return v1::MIGRATION_STATUS_FAILED;
    case MigrationStatus::kCancelled:
      return v1::MIGRATION_STATUS_CANCELLED;
    case MigrationStatus::kError:
      return v1::MIGRATION_STATUS_ERROR;
  }
  return v1::MIGRATION_STATUS_UNSPECIFIED;
}

absl::StatusOr<MigrationStatus> FromProtoStatus(v1::MigrationStatus s) {
  for (MigrationStatus m : AllMigrationStatuses()) {
    if (ToProtoStatus(m) == s) return m;
  }
  return absl::InvalidArgumentError(
      "unknown migration status filter: use accepted, queued, preparing, running, "
      "running (post-copy), post-migrating, completed, failed, cancelled or error");
}

std::string OptionsToJson(const v1::MigrationOptions& o) {
  std::string out;
  google::protobuf::util::JsonPrintOptions p;
  p.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(o, &out, p).ok()) return "{}";
  return out;
}

v1::MigrationOptions OptionsFromJson(const std::string& json) {
  v1::MigrationOptions o;
  google::protobuf::util::JsonParseOptions p;
  p.ignore_unknown_fields = true;
  (void)google::protobuf::util::JsonStringToMessage(json, &o, p);
  return o;
}

v1::DomainState DomainStateFromName(const std::string& s) {
  std::string upper = "DOMAIN_STATE_";
  for (char c : s)
    upper += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  v1::DomainState d = v1::DOMAIN_STATE_UNSPECIFIED;
  v1::DomainState_Parse(upper, &d);
  return d;
}

std::string DomainStateName(v1::DomainState s) {
  std::string name = v1::DomainState_Name(s);
  const std::string prefix = "DOMAIN_STATE_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

db::HostReport ReportFromInventory(const v1::HostInventory& inv) {
  db::HostReport r;
  r.hostname = inv.hostname();
  r.agent_address = inv.agent_address();
  r.agent_version = inv.agent_version();
  r.hypervisor_type = inv.hypervisor_type();
  r.hypervisor_version = static_cast<int64_t>(inv.hypervisor_version());
  r.libvirt_version = static_cast<int64_t>(inv.libvirt_version());
  r.cpu_arch = inv.cpu().arch();
  r.cpu_model = inv.cpu().model();
  r.cpu_features.assign(inv.cpu().features().begin(), inv.cpu().features().end());
  r.cpu_xml = inv.cpu().xml();
  r.memory_total_mib = static_cast<int64_t>(inv.memory_total_mib());
  r.memory_free_mib = static_cast<int64_t>(inv.memory_free_mib());
  r.memory_reserved_mib = static_cast<int64_t>(inv.memory_reserved_mib());
  for (const auto& n : inv.networks())
    r.network_segments.push_back(n.segment().empty() ? n.name() : n.segment());
  for (const auto& m : inv.storage_mounts()) {
    if (m.shared()) r.shared_storage.push_back(m.mount_point());
  }
  r.instance_path = inv.instance_path();
  std::string caps;
  google::protobuf::util::JsonPrintOptions p;
  p.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(inv.capabilities(), &caps, p);
  r.capabilities_json = caps.empty() ? "{}" : caps;
  r.agent_boot_id = std::to_string(inv.agent_started_at().seconds()) + "." +
                    std::to_string(inv.agent_started_at().nanos());
  r.seq = static_cast<int64_t>(inv.report_seq());
  for (const auto& d : inv.domains()) {
    db::DomainReport dr;
    dr.uuid = d.uuid();
    dr.name = d.name();
    // Incoming (paused-for-migration) domains are reported as such; the store never moves
    // an instance that a migration holds.
    dr.power_state = DomainStateName(d.state());
    dr.memory_mib = static_cast<int64_t>(d.memory_mib());
    dr.vcpus = static_cast<int32_t>(d.vcpus());
    dr.disks_json = DisksToJson(d.disks());
    r.domains.push_back(std::move(dr));
  }
  return r;
}

sv1::Host ToProtoHost(const db::HostRecord& h) {
  sv1::Host out;
  const db::HostReport& p = h.report;
  v1::HostInventory* inv = out.mutable_inventory();
  inv->set_hostname(p.hostname);
  inv->set_agent_address(p.agent_address);
  inv->set_agent_version(p.agent_version);
  inv->set_hypervisor_type(p.hypervisor_type);
  inv->set_hypervisor_version(static_cast<uint64_t>(p.hypervisor_version));
  inv->set_libvirt_version(static_cast<uint64_t>(p.libvirt_version));
  inv->mutable_cpu()->set_arch(p.cpu_arch);
  inv->mutable_cpu()->set_model(p.cpu_model);
  for (const auto& f : p.cpu_features) inv->mutable_cpu()->add_features(f);
  inv->mutable_cpu()->set_xml(p.cpu_xml);
  inv->set_memory_total_mib(static_cast<uint64_t>(p.memory_total_mib));
  inv->set_memory_free_mib(static_cast<uint64_t>(p.memory_free_mib));
  inv->set_memory_reserved_mib(static_cast<uint64_t>(p.memory_reserved_mib));
  for (const auto& n : p.network_segments) {
    auto* b = inv->add_networks();
    b->set_name(n);
    b->set_segment(n);
    b->set_up(true);
  }
  for (const auto& s : p.shared_storage) {
    auto* m = inv->add_storage_mounts();
    m->set_mount_point(s);
    m->set_shared(true);
  }
  inv->set_instance_path(p.instance_path);
  google::protobuf::util::JsonParseOptions jp;
  jp.ignore_unknown_fields = true;
  (void)google::protobuf::util::JsonStringToMessage(p.capabilities_json,
                                                    inv->mutable_capabilities(), jp);
  inv->set_report_seq(static_cast<uint64_t>(p.seq));
  out.set_enabled(h.enabled);
  out.set_disabled_reason(h.disabled_reason);
  out.set_disabled_by(h.disabled_by);
  if (h.disabled_at) *out.mutable_disabled_at() = ToProtoTime(*h.disabled_at);
  out.set_up(h.up);
  if (h.last_report_at) *out.mutable_last_report_at() = ToProtoTime(*h.last_report_at);
  out.set_memory_claimed_mib(static_cast<uint64_t>(h.memory_claimed_mib));
  out.set_memory_available_mib(p.memory_free_mib - p.memory_reserved_mib - h.memory_claimed_mib);
  out.set_migrations_out(static_cast<uint32_t>(h.migrations_out));
  out.set_migrations_in(static_cast<uint32_t>(h.migrations_in));
  out.set_instance_count(static_cast<uint32_t>(h.instances));
  return out;
}

sv1::Instance ToProtoInstance(const db::InstanceRecord& i) {
  sv1::Instance out;
  out.set_uuid(i.uuid);
  out.set_name(i.name);
  out.set_host(i.host);
  out.set_state(DomainStateFromName(i.power_state));
  out.set_memory_mib(static_cast<uint64_t>(i.memory_mib));
  out.set_vcpus(static_cast<uint32_t>(i.vcpus));
  out.set_task_state(i.task_state ? sv1::TASK_STATE_MIGRATING : sv1::TASK_STATE_NONE);
  out.set_missing(i.missing);
  if (i.missing_since) *out.mutable_missing_since() = ToProtoTime(*i.missing_since);
  if (i.active_migration_id) out.set_active_migration_id(std::to_string(*i.active_migration_id));
  *out.mutable_updated_at() = ToProtoTime(i.updated_at);
  *out.mutable_disks() = DisksFromJson(i.disks_json);
  return out;
}

namespace {
// The array of the one repeated field set in `holder`, as proto3 JSON: the message printed, the
// array cut out of it ("[]" when it cannot be printed).
std::string OnlyArrayJson(const google::protobuf::Message& holder) {
  std::string out;
  google::protobuf::util::JsonPrintOptions p;
  p.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(holder, &out, p).ok()) return "[]";
  const size_t open = out.find('['), close = out.rfind(']');
  if (open == std::string::npos || close == std::string::npos) return "[]";
  return out.substr(open, close - open + 1);
}
}  // namespace

std::string DisksToJson(const google::protobuf::RepeatedPtrField<v1::DomainDisk>& disks) {
  if (disks.empty()) return "[]";
  v1::DomainInfo holder;
  *holder.mutable_disks() = disks;
  return OnlyArrayJson(holder);
}

google::protobuf::RepeatedPtrField<v1::DomainDisk> DisksFromJson(const std::string& json) {
  v1::DomainInfo holder;
  google::protobuf::util::JsonParseOptions p;
  p.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage("{\"disks\":" + json + "}", &holder, p).ok()) {
    return {};
  }
  return std::move(*holder.mutable_disks());
}

std::string CandidatesToJson(const std::vector<sv1::HostCheck>& ranked, size_t max) {
  sv1::Migration holder;
  for (size_t i = 0; i < ranked.size() && i < max; ++i) *holder.add_candidates() = ranked[i];
  return OnlyArrayJson(holder);
}

google::protobuf::RepeatedPtrField<sv1::HostCheck> CandidatesFromJson(const std::string& json) {
  sv1::Migration holder;
  google::protobuf::util::JsonParseOptions p;
  p.ignore_unknown_fields = true;
  (void)google::protobuf::util::JsonStringToMessage("{\"candidates\":" + json + "}", &holder, p);
  return std::move(*holder.mutable_candidates());
}

sv1::Migration ToProtoMigration(const db::MigrationRecord& m,
                                const std::vector<db::MigrationEvent>& events) {
  sv1::Migration out;
  out.set_id(m.uuid);
  out.set_number(m.id);
  out.set_instance_uuid(m.instance_uuid);
  out.set_instance_name(m.instance_name);
  out.set_source_host(m.source_host);
  out.set_dest_host(m.dest_host);
  out.set_dest_requested(!m.requested_dest.empty());
  out.set_status(ToProtoStatus(m.status));
  out.set_step(m.step);
  *out.mutable_options() = OptionsFromJson(m.options_json);
  v1::MigrationProgress* p = out.mutable_progress();
  const std::string& ph = m.progress.phase;
  p->set_phase(ph == "post-copy"            ? v1::MIGRATION_PHASE_POST_COPY
               : ph == "paused-to-complete" ? v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE
               : ph == "offline-copy"       ? v1::MIGRATION_PHASE_OFFLINE_COPY
               : ph == "pre-copy"           ? v1::MIGRATION_PHASE_PRE_COPY
                                            : v1::MIGRATION_PHASE_UNSPECIFIED);
  p->set_has_bytes(m.progress.bytes_total.has_value());
  p->set_bytes_total(static_cast<uint64_t>(m.progress.bytes_total.value_or(0)));
  p->set_bytes_processed(static_cast<uint64_t>(m.progress.bytes_processed.value_or(0)));
  p->set_bytes_remaining(static_cast<uint64_t>(m.progress.bytes_remaining.value_or(0)));
  p->set_percent(m.progress.percent.value_or(0));
  p->set_elapsed_ms(static_cast<uint64_t>(m.progress.elapsed_ms.value_or(0)));
  p->set_downtime_ms(static_cast<uint64_t>(m.progress.downtime_ms.value_or(0)));
  if (m.progress.sampled_at) *p->mutable_sampled_at() = ToProtoTime(*m.progress.sampled_at);
  out.set_post_copy_started(m.status == MigrationStatus::kRunningPostCopy || ph == "post-copy");
  out.set_requester(m.requested_by);
  out.set_aborted_by(m.aborted_by);
  out.set_abort_reason(m.abort_reason);
  out.set_force_completed_by(m.force_complete_requested_by);
  out.set_failure_reason(m.failure_reason);
  out.set_request_id(m.request_id.value_or(""));
  out.set_evacuation_id(m.evacuation_uuid);
  out.set_memory_claimed_mib(static_cast<uint64_t>(m.memory_claim_mib));
  if (!m.candidates_json.empty()) {
    *out.mutable_candidates() = CandidatesFromJson(m.candidates_json);
  }
  *out.mutable_created_at() = ToProtoTime(m.created_at);
  *out.mutable_updated_at() = ToProtoTime(m.updated_at);
  if (m.started_at) *out.mutable_transfer_started_at() = ToProtoTime(*m.started_at);
  if (m.finished_at) *out.mutable_finished_at() = ToProtoTime(*m.finished_at);
  uint64_t seq = 0;
  for (const auto& e : events) {
    sv1::MigrationEvent* pe = out.add_events();
    pe->set_seq(++seq);
    pe->set_step(e.step);
    pe->set_outcome(e.kind == "intent"      ? sv1::STEP_OUTCOME_STARTED
                    : e.kind == "info"      ? sv1::STEP_OUTCOME_NOTE
                    : e.outcome == "failed" ? sv1::STEP_OUTCOME_FAILED
                                            : sv1::STEP_OUTCOME_SUCCEEDED);
    *pe->mutable_started_at() = ToProtoTime(e.started_at);
    if (e.finished_at) *pe->mutable_finished_at() = ToProtoTime(*e.finished_at);
    pe->set_duration_ms(static_cast<uint64_t>(e.duration_ms.value_or(0)));
    pe->set_detail(e.detail);
    pe->set_host(e.host);
    pe->set_scheduler_id(e.actor);
  }
  return out;
}

}  // namespace livemig::sched
