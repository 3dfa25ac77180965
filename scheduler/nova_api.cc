// Size: Nova's compute API subset (servers, migrations, services, hypervisors, instance actions):
// the JSON views (~330 lines) and one route table; the views could be a file of their own.
#include "scheduler/nova_api.h"

#include <openssl/sha.h>

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/http_server.h"
#include "common/status_map.h"
#include "db/pg_stores.h"
#include "nlohmann/json.hpp"
#include "scheduler/convert.h"
#include "scheduler/rest_parse.h"

namespace livemig::sched {
namespace {

using json = nlohmann::json;

std::string Iso(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6S", FromProtoTime(t), absl::UTCTimeZone());
}

// A stable UUID for a host's service / hypervisor record (Nova 2.53+ uses UUIDs).
std::string HostUuid(const std::string& host) {
  unsigned char d[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(host.data()), host.size(), d);
  d[6] = (d[6] & 0x0f) | 0x50;  // version 5 (name-based)
  d[8] = (d[8] & 0x3f) | 0x80;
  std::string hex;
  for (int i = 0; i < 16; ++i) absl::StrAppend(&hex, absl::Hex(d[i], absl::kZeroPad2));
  return absl::StrCat(hex.substr(0, 8), "-", hex.substr(8, 4), "-", hex.substr(12, 4), "-",
                      hex.substr(16, 4), "-", hex.substr(20, 12));
}

struct Ctx {
  int minor = 1;
  std::string who;
};

void NovaError(http::Response& res, const absl::Status& s) {
  NovaErrorReply(res, s, HttpCodeFor(s.code()));
}

// Replies with `body`; strings that quote the request's bytes may hold invalid UTF-8, which is
// replaced (U+FFFD) rather than thrown over.
void Reply(http::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// Microversion negotiation and authentication; false after answering with an error.
bool Begin(const http::Request& req, http::Response& res, const TokenStore* tokens, bool mutating,
           const std::string& op, Ctx* ctx) {
  auto minor =
      ParseMicroversion(req.get_header_value("OpenStack-API-Version"),
                        req.get_header_value("X-OpenStack-Nova-API-Version"), kNovaMaxMinor);
  if (!minor.ok()) {
    NovaErrorReply(res, minor.status(), 406);
    return false;
  }
  ctx->minor = *minor;
  const std::string ver = absl::StrCat("2.", ctx->minor);
  res.set_header("OpenStack-API-Version", "compute " + ver);
  res.set_header("X-OpenStack-Nova-API-Version", ver);
  res.set_header("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version");
  std::string token = req.get_header_value("X-Auth-Token");
  auto p = tokens->Check(token.empty() ? req.get_header_value("Authorization") : "Bearer " + token,
                         mutating, op);
  if (!p.ok()) {
    NovaError(res, p.status());
    return false;
  }
  ctx->who = p->name;
  return true;
}

// The same check as Begin's, on the headers alone: a request it refuses is answered without
// reading its body.
http::Gate NovaGate(const TokenStore* tokens, bool mutating, const std::string& op) {
  return [tokens, mutating, op](const http::Request& req, http::Response& res) {
    Ctx c;
    if (Begin(req, res, tokens, mutating, op, &c)) return true;
    res.close = true;
    return false;
  };
}

std::string NovaStatus(MigrationStatus s) {
  switch (s) {
    case MigrationStatus::kRunningPostCopy:
      return "running";
    default:
      return ToString(s);
  }
}

json ServerJson(const sv1::Instance& i, const Ctx& c, bool detail) {
  json s = {{"id", i.uuid()},
            {"name", i.name()},
            {"links", json::array({{{"rel", "self"}, {"href", "/v2.1/servers/" + i.uuid()}}})}};
  if (!detail) return s;
  const bool migrating = i.task_state() == sv1::TASK_STATE_MIGRATING;
  std::string status = "ERROR", vm_state = "error";
  int power = 0;
  if (!i.missing()) {
    switch (i.state()) {
      case v1::DOMAIN_STATE_RUNNING:
      case v1::DOMAIN_STATE_BLOCKED:
        status = "ACTIVE", vm_state = "active", power = 1;
        break;
      case v1::DOMAIN_STATE_PAUSED:
        status = "PAUSED", vm_state = "paused", power = 3;
        break;
      case v1::DOMAIN_STATE_SHUTOFF:
      case v1::DOMAIN_STATE_SHUTDOWN:
        status = "SHUTOFF", vm_state = "stopped", power = 4;
        break;
      default:
        break;
    }
  }
  if (migrating) status = "MIGRATING";
  const std::string flavor_name = absl::StrCat("livemig-", i.memory_mib(), "m", i.vcpus(), "c");
  s["status"] = status;
  s["OS-EXT-SRV-ATTR:host"] = i.host();
  s["OS-EXT-SRV-ATTR:hypervisor_hostname"] = i.host();
  s["OS-EXT-SRV-ATTR:instance_name"] = i.name();
  s["OS-EXT-STS:task_state"] = migrating ? json("migrating") : json(nullptr);
  s["OS-EXT-STS:vm_state"] = vm_state;
  s["OS-EXT-STS:power_state"] = power;
  s["OS-EXT-AZ:availability_zone"] = "nova";
  s["OS-DCF:diskConfig"] = "MANUAL";
  s["OS-SRV-USG:launched_at"] = nullptr;
  s["OS-SRV-USG:terminated_at"] = nullptr;
  if (c.minor >= 47) {
    s["flavor"] = {{"original_name", flavor_name},
                   {"ram", i.memory_mib()},
                   {"vcpus", i.vcpus()},
                   {"disk", 0},
                   {"ephemeral", 0},
                   {"swap", 0},
                   {"extra_specs", json::object()}};
  } else {
    s["flavor"] = {{"id", flavor_name}, {"links", json::array()}};
  }
  s["image"] = "";
  s["addresses"] = json::object();
  s["accessIPv4"] = "";
  s["accessIPv6"] = "";
  s["created"] = Iso(i.updated_at());
  s["updated"] = Iso(i.updated_at());
  s["tenant_id"] = "livemig";
  s["user_id"] = "livemig";
  s["hostId"] = HostUuid(i.host());
  s["key_name"] = nullptr;
  s["metadata"] = json::object();
  s["config_drive"] = "";
  s["progress"] = 0;
  s["security_groups"] = json::array();
  s["os-extended-volumes:volumes_attached"] = json::array();
  if (c.minor >= 9) s["locked"] = false;
  if (c.minor >= 16) s["host_status"] = i.missing() ? "UNKNOWN" : "UP";
  if (c.minor >= 19) s["description"] = nullptr;
  if (c.minor >= 26) s["tags"] = json::array();
  if (c.minor >= 63) s["trusted_image_certificates"] = nullptr;
  if (c.minor >= 71) s["server_groups"] = json::array();
  if (c.minor >= 73) s["locked_reason"] = nullptr;
  return s;
}

json MigrationJson(const sv1::Migration& m, const Ctx& c, bool server_view) {
  auto st = ParseMigrationStatus("");
  (void)st;
  MigrationStatus status = MigrationStatus::kAccepted;
  if (auto from = FromProtoStatus(m.status()); from.ok()) status = *from;
  json j = {{"id", m.number()},
            {"source_node", m.source_host()},
            {"dest_node", m.dest_host()},
            {"source_compute", m.source_host()},
            {"dest_compute", m.dest_host()},
            {"dest_host", m.dest_host()},
            {"status", NovaStatus(status)},
            {"created_at", Iso(m.created_at())},
            {"updated_at", Iso(m.updated_at())}};
  if (server_view) {
    j["server_uuid"] = m.instance_uuid();
    const auto& p = m.progress();
    j["memory_total_bytes"] = p.has_bytes() ? json(p.bytes_total()) : json(nullptr);
    j["memory_processed_bytes"] = p.has_bytes() ? json(p.bytes_processed()) : json(nullptr);
    j["memory_remaining_bytes"] = p.has_bytes() ? json(p.bytes_remaining()) : json(nullptr);
    j["disk_total_bytes"] = nullptr;
    j["disk_processed_bytes"] = nullptr;
    j["disk_remaining_bytes"] = nullptr;
  } else {
    j["instance_uuid"] = m.instance_uuid();
    j["old_instance_type_id"] = 0;
    j["new_instance_type_id"] = 0;
    if (c.minor >= 23) {
      j["migration_type"] = "live-migration";
      j["links"] = json::array();
    }
  }
  if (c.minor >= 59) j["uuid"] = m.id();
  return j;
}

json ServiceJson(const sv1::Host& h, const Ctx& c) {
  return {
      {"id", c.minor >= 53 ? json(HostUuid(h.inventory().hostname())) : json(1)},
      {"binary", "nova-compute"},
      {"host", h.inventory().hostname()},
      {"zone", "nova"},
      {"status", h.enabled() ? "enabled" : "disabled"},
      {"state", h.up() ? "up" : "down"},
      {"updated_at", Iso(h.last_report_at())},
      {"disabled_reason", h.disabled_reason().empty() ? json(nullptr) : json(h.disabled_reason())},
      {"forced_down", false}};
}

json HypervisorJson(const sv1::Host& h, const Ctx& c, bool detail) {
  const auto& inv = h.inventory();
  json j = {{"id", c.minor >= 53 ? json(HostUuid(inv.hostname())) : json(1)},
            {"hypervisor_hostname", inv.hostname()},
            {"state", h.up() ? "up" : "down"},
            {"status", h.enabled() ? "enabled" : "disabled"}};
  if (!detail) return j;
  const int64_t total = static_cast<int64_t>(inv.memory_total_mib());
  const int64_t free_mib = static_cast<int64_t>(inv.memory_free_mib());
  j["hypervisor_type"] = inv.hypervisor_type();
  j["hypervisor_version"] = inv.hypervisor_version();
  j["host_ip"] = "";
  j["memory_mb"] = total;
  j["memory_mb_used"] = total - free_mib;
  j["free_ram_mb"] = free_mib;
  j["vcpus"] = inv.cpu().count();
  j["vcpus_used"] = 0;
  j["local_gb"] = 0;
  j["local_gb_used"] = 0;
  j["free_disk_gb"] = 0;
  j["disk_available_least"] = 0;
  j["running_vms"] = h.instance_count();
  j["current_workload"] = h.migrations_in() + h.migrations_out();
  const json cpu = {{"arch", inv.cpu().arch()}, {"model", inv.cpu().model()}};
  j["cpu_info"] = c.minor >= 28 ? cpu : json(cpu.dump());  // an object from 2.28
  j["service"] = {
      {"host", inv.hostname()},
      {"id", c.minor >= 53 ? json(HostUuid(inv.hostname())) : json(1)},
      {"disabled_reason", h.disabled_reason().empty() ? json(nullptr) : json(h.disabled_reason())}};
  return j;
}

// Finds the host whose service/hypervisor UUID (or name) is `id`.
absl::StatusOr<sv1::Host> HostById(ApiCore* core, const std::string& id) {
  auto hosts = core->ListAllHosts();
  if (!hosts.ok()) return hosts.status();
  for (const auto& h : *hosts) {
    if (HostUuid(h.inventory().hostname()) == id || h.inventory().hostname() == id) return h;
  }
  return absl::NotFoundError(absl::StrCat("Service ", id, " could not be found."));
}

// True for the steps an agent runs (on the source or the destination).
bool AgentStep(v1::MigrationStep step) {
  switch (step) {
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST:
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC:
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST_CLEANUP:
    case v1::MIGRATION_STEP_PRE_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_POST_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION:
    case v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION:
    case v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_ABORT:
    case v1::MIGRATION_STEP_FORCE_COMPLETE:
      return true;
    default:
      return false;
  }
}

// Nova's instance-action event name for a step: Nova's own where Nova has the event; otherwise
// the step's name after "compute_" (an agent runs it) or "conductor_" (the scheduler, which
// plays the conductor's part).
std::string NovaEventName(v1::MigrationStep step) {
  switch (step) {
    case v1::MIGRATION_STEP_ACCEPT:
      return "conductor_live_migrate_instance";
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST:
      return "compute_check_can_live_migrate_destination";
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC:
      return "compute_check_can_live_migrate_source";
    case v1::MIGRATION_STEP_PRE_LIVE_MIGRATION:
      return "compute_pre_live_migration";
    case v1::MIGRATION_STEP_LIVE_MIGRATION:
      return "compute_live_migration";
    case v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION:
      return "compute_post_live_migration_at_destination";
    case v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION:
      return "compute_rollback_live_migration_at_destination";
    case v1::MIGRATION_STEP_ABORT:
      return "compute_live_migration_abort";
    case v1::MIGRATION_STEP_FORCE_COMPLETE:
      return "compute_live_migration_force_complete";
    default:
      return absl::StrCat(AgentStep(step) ? "compute_" : "conductor_", StepName(step));
  }
}

// A migration's instance-action request id: "req-" and the migration's UUID (stable, and the
// form Nova's request ids have).
std::string ActionRequestId(const sv1::Migration& m) { return "req-" + m.id(); }

// Each migration is one `live-migration` action; its events are the migration's steps.
json ActionJson(const sv1::Migration& m, const Ctx& c, bool with_events) {
  MigrationStatus status = MigrationStatus::kAccepted;
  if (auto from = FromProtoStatus(m.status()); from.ok()) status = *from;
  const bool failed = status == MigrationStatus::kFailed || status == MigrationStatus::kError;
  json a = {{"action", "live-migration"},
            {"instance_uuid", m.instance_uuid()},
            {"request_id", ActionRequestId(m)},
            {"user_id", m.requester()},
            {"project_id", "livemig"},
            {"start_time", Iso(m.created_at())},
            {"message", failed ? json("Error") : json(nullptr)}};
  if (c.minor >= 58) a["updated_at"] = Iso(m.updated_at());
  if (!with_events) return a;
  // The log holds a step's intent (STARTED) and later its result, each with the host the step
  // ran on (recorded since schema 10; "" before, as for the scheduler's own steps); Nova shows
  // one event per call: the intent alone while the step runs, then its result.
  json events = json::array();
  std::map<v1::MigrationStep, size_t> running;  // step -> index of its intent in `events`
  std::map<v1::MigrationStep, size_t> relays;   // abort, force_complete -> index in `events`
  for (const auto& e : m.events()) {
    const std::string name = NovaEventName(e.step());
    if (e.outcome() == sv1::STEP_OUTCOME_STARTED) {
      json ev = {{"event", name},          {"start_time", Iso(e.started_at())},
                 {"finish_time", nullptr}, {"result", nullptr},
                 {"traceback", nullptr},   {"host", e.host()}};
      running[e.step()] = events.size();
      events.push_back(ev);
      continue;
    }
    const bool error = e.outcome() == sv1::STEP_OUTCOME_FAILED;
    const std::string finish = Iso(e.has_finished_at() ? e.finished_at() : e.started_at());
    // An operator's abort or force-complete is logged as notes (the request, its relay to the
    // source): together one event, Nova's compute_live_migration_abort / _force_complete, from
    // the first note to the last. Other notes are not events.
    if (e.step() == v1::MIGRATION_STEP_ABORT || e.step() == v1::MIGRATION_STEP_FORCE_COMPLETE) {
      auto [it, first] = relays.emplace(e.step(), events.size());
      if (first) {
        events.push_back({{"event", name},
                          {"start_time", Iso(e.started_at())},
                          {"result", "Success"},
                          {"traceback", nullptr},
                          {"host", m.source_host()}});
      }
      json& ev = events[it->second];
      ev["finish_time"] = finish;
      if (error) ev["result"] = "Error", ev["traceback"] = e.detail();
      continue;
    }
    if (e.outcome() != sv1::STEP_OUTCOME_SUCCEEDED && !error &&
        e.outcome() != sv1::STEP_OUTCOME_SKIPPED) {
      continue;
    }
    json* ev;
    if (auto it = running.find(e.step()); it != running.end()) {
      ev = &events[it->second];
      running.erase(it);
    } else {  // a result without its intent in the log
      events.push_back({{"event", name}, {"start_time", Iso(e.started_at())}, {"host", e.host()}});
      ev = &events.back();
    }
    (*ev)["finish_time"] = finish;  // start_time: when the intent was recorded
    (*ev)["result"] = error ? "Error" : "Success";
    (*ev)["traceback"] = error ? json(e.detail()) : json(nullptr);
  }
  for (auto& ev : events) {  // host and hostId from 2.62
    const std::string host = ev["host"];
    if (c.minor >= 62) {
      ev["hostId"] = host.empty() ? "" : HostUuid(host);
    } else {
      ev.erase("host");
    }
  }
  a["events"] = events;
  return a;
}

// The not-served query parameters of a list this API answers whole.
absl::Status NoPagingParams(const http::Request& req) {
  for (const char* p : {"limit", "marker", "changes-since", "changes-before"}) {
    if (req.has_param(p)) {
      return absl::InvalidArgumentError(
          absl::StrCat("query parameter ", p, " is not served by this API (the list is whole)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void NovaErrorReply(http::Response& res, const absl::Status& s, int http) {
  const char* key = http == 400   ? "badRequest"
                    : http == 401 ? "unauthorized"
                    : http == 403 ? "forbidden"
                    : http == 404 ? "itemNotFound"
                    : http == 409 ? "conflictingRequest"
                    : http == 406 ? "notAcceptable"
                    : http == 413 ? "overLimit"
                    : http == 503 ? "serviceUnavailable"
                                  : "computeFault";
  json body;
  body[key] = {{"code", http}, {"message", std::string(s.message())}};
  res.status = http;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

std::string NovaVersionsJson(const std::string& base_url, bool root) {
  json v = {{"id", "v2.1"},
            {"status", "CURRENT"},
            {"version", absl::StrCat("2.", kNovaMaxMinor)},
            {"min_version", "2.1"},
            {"updated", "2013-07-23T11:33:21Z"},
            {"links", json::array({{{"rel", "self"}, {"href", base_url + "/v2.1/"}}})},
            {"media-types",
             json::array({{{"base", "application/json"},
                           {"type", "application/vnd.openstack.compute+json;version=2.1"}}})}};
  return root ? json{{"versions", json::array({v})}}.dump() : json{{"version", v}}.dump();
}

void RegisterNovaApi(http::Server& s, ApiCore* core, const TokenStore* tokens) {
  auto base = [](const http::Request& req) { return "http://" + req.get_header_value("Host"); };
  s.Get("/v2.1", [base](const http::Request& req, http::Response& res) {
    res.set_content(NovaVersionsJson(base(req), false), "application/json");
  });
  s.Get("/v2.1/", [base](const http::Request& req, http::Response& res) {
    res.set_content(NovaVersionsJson(base(req), false), "application/json");
  });

  auto servers = [core, tokens](bool detail) {
    return [core, tokens, detail](const http::Request& req, http::Response& res) {
      Ctx c;
      if (!Begin(req, res, tokens, false, "GET /v2.1/servers", &c)) return;
      sv1::ListInstancesRequest r;
      r.set_host(req.get_param_value("host"));
      r.set_page_size(1000);
      json out = json::array();
      const std::string name = req.get_param_value("name");
      do {  // every page (ListInstances pages by name, then UUID)
        auto list = core->ListInstances(r);
        if (!list.ok()) return NovaError(res, list.status());
        for (const auto& i : list->instances()) {
          if (!name.empty() && i.name().find(name) == std::string::npos) continue;
          out.push_back(ServerJson(i, c, detail));
        }
        r.set_page_token(list->next_page_token());
      } while (!r.page_token().empty());
      Reply(res, {{"servers", out}});
    };
  };
  s.Get("/v2.1/servers", NovaGate(tokens, false, "GET /v2.1/servers"), servers(false));
  s.Get("/v2.1/servers/detail", NovaGate(tokens, false, "GET /v2.1/servers"), servers(true));
  s.Get(R"(/v2.1/servers/([^/]+))", NovaGate(tokens, false, "GET /v2.1/servers/{id}"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/servers/{id}", &c)) return;
          const std::string id = req.matches[1];
          if (!IsUuid(id)) {
            // The client looks servers up by name when the id is not a UUID; this API knows UUIDs.
            return NovaError(
                res, absl::NotFoundError(absl::StrCat("Instance ", id, " could not be found.")));
          }
          auto i = core->GetInstance(id);
          if (!i.ok()) return NovaError(res, i.status());
          Reply(res, {{"server", ServerJson(*i, c, true)}});
        });
  s.Post(R"(/v2.1/servers/([^/]+)/action)", NovaGate(tokens, true, "os-migrateLive"),
         [core, tokens](const http::Request& req, http::Response& res) {
           Ctx c;
           if (!Begin(req, res, tokens, true, "os-migrateLive", &c)) return;
           auto r = ParseNovaMigrateLive(req.matches[1], req.body, c.minor);
           if (!r.ok()) return NovaError(res, r.status());
           auto out = core->LiveMigrate(*r, c.who);
           if (!out.ok()) return NovaError(res, out.status());
           res.status = 202;
         });
  s.Get(R"(/v2.1/servers/([^/]+)/migrations)",
        NovaGate(tokens, false, "GET /v2.1/servers/{id}/migrations"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/servers/{id}/migrations", &c)) return;
          if (auto st = CheckNovaServerId(req.matches[1]); !st.ok()) {
            return NovaError(res, st);
          }
          sv1::ListMigrationsRequest r;
          r.set_instance_uuid(req.matches[1]);
          for (MigrationStatus st : AllMigrationStatuses()) {
            if (IsActive(st)) r.add_statuses(ToProtoStatus(st));
          }
          auto list = core->ListMigrations(r);
          if (!list.ok()) return NovaError(res, list.status());
          json out = json::array();
          for (const auto& m : list->migrations()) out.push_back(MigrationJson(m, c, true));
          Reply(res, {{"migrations", out}});
        });
  s.Get(R"(/v2.1/servers/([^/]+)/migrations/([^/]+))",
        NovaGate(tokens, false, "GET /v2.1/servers/{id}/migrations/{mid}"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/servers/{id}/migrations/{mid}", &c)) {
            return;
          }
          if (auto st = CheckNovaServerId(req.matches[1]); !st.ok()) {
            return NovaError(res, st);
          }
          if (auto st = CheckMigrationId(req.matches[2]); !st.ok()) {
            return NovaError(res, st);
          }
          auto m = core->GetMigration(req.matches[2], false);
          if (!m.ok()) return NovaError(res, m.status());
          if (m->instance_uuid() != req.matches[1]) {
            return NovaError(res, absl::NotFoundError(absl::StrCat("Migration ", req.matches[2],
                                                                   " for instance ", req.matches[1],
                                                                   " could not be found.")));
          }
          Reply(res, {{"migration", MigrationJson(*m, c, true)}});
        });
  s.Delete(R"(/v2.1/servers/([^/]+)/migrations/([^/]+))", NovaGate(tokens, true, "abort"),
           [core, tokens](const http::Request& req, http::Response& res) {
             Ctx c;
             if (!Begin(req, res, tokens, true, "abort", &c)) return;
             if (auto st = CheckNovaServerId(req.matches[1]); !st.ok()) {
               return NovaError(res, st);
             }
             if (auto st = CheckMigrationId(req.matches[2]); !st.ok()) {
               return NovaError(res, st);
             }
             sv1::AbortMigrationRequest r;
             r.set_migration_id(req.matches[2]);
             r.set_requester("nova-api");
             auto out = core->AbortMigration(r, c.who);
             if (!out.ok()) return NovaError(res, out.status());
             res.status = 202;
           });
  s.Post(R"(/v2.1/servers/([^/]+)/migrations/([^/]+)/action)",
         NovaGate(tokens, true, "force_complete"),
         [core, tokens](const http::Request& req, http::Response& res) {
           Ctx c;
           if (!Begin(req, res, tokens, true, "force_complete", &c)) return;
           if (auto st = ParseNovaForceComplete(req.matches[1], req.matches[2], req.body);
               !st.ok()) {
             return NovaError(res, st);
           }
           sv1::ForceCompleteMigrationRequest r;
           r.set_migration_id(req.matches[2]);
           r.set_requester("nova-api");
           auto out = core->ForceCompleteMigration(r, c.who);
           if (!out.ok()) return NovaError(res, out.status());
           res.status = 202;
         });
  s.Get("/v2.1/os-migrations", NovaGate(tokens, false, "GET /v2.1/os-migrations"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-migrations", &c)) return;
          auto q = ParseNovaMigrationsQuery(req.params);
          if (!q.ok()) return NovaError(res, q.status());
          if (q->nothing) return Reply(res, {{"migrations", json::array()}});
          sv1::ListMigrationsRequest& r = q->request;
          if (q->marker) {
            auto m = core->GetMigration(*q->marker, false);
            if (!m.ok()) {
              return NovaError(res, absl::InvalidArgumentError(absl::StrCat(
                                        "Marker ", *q->marker, " could not be found.")));
            }
            r.set_page_token(db::PageTokenAfter(m->number()));
          }
          auto list = core->ListMigrations(r);
          if (!list.ok()) return NovaError(res, list.status());
          json out = json::array();
          for (const auto& m : list->migrations()) out.push_back(MigrationJson(m, c, false));
          if (q->limit == 0) out = json::array();
          Reply(res, {{"migrations", out}});
        });
  s.Get("/v2.1/os-services", NovaGate(tokens, false, "GET /v2.1/os-services"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-services", &c)) return;
          auto hosts = core->ListAllHosts();
          if (!hosts.ok()) return NovaError(res, hosts.status());
          json out = json::array();
          const std::string host = req.get_param_value("host");
          const std::string binary = req.get_param_value("binary");
          for (const auto& h : *hosts) {
            if (!host.empty() && h.inventory().hostname() != host) continue;
            if (!binary.empty() && binary != "nova-compute") continue;
            out.push_back(ServiceJson(h, c));
          }
          Reply(res, {{"services", out}});
        });
  s.Put(R"(/v2.1/os-services/([^/]+))", NovaGate(tokens, true, "PUT /v2.1/os-services/{id}"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, true, "PUT /v2.1/os-services/{id}", &c)) return;
          if (c.minor < 53) {
            return NovaError(res, absl::InvalidArgumentError(
                                      "this API serves PUT /os-services/{service_id} (microversion "
                                      "2.53 and later)"));
          }
          auto update = ParseNovaServiceUpdate(req.body);
          if (!update.ok()) return NovaError(res, update.status());
          auto h = HostById(core, req.matches[1]);
          if (!h.ok()) return NovaError(res, h.status());
          sv1::SetHostEnabledRequest r;
          r.set_hostname(h->inventory().hostname());
          r.set_enabled(update->enabled.value_or(h->enabled()));
          if (update->reason) r.set_reason(*update->reason);
          if (!r.enabled() && r.reason().empty()) r.set_reason("disabled through the Compute API");
          r.set_requester("nova-api");
          auto out = core->SetHostEnabled(r, c.who);
          if (!out.ok()) return NovaError(res, out.status());
          Reply(res, {{"service", ServiceJson(*out, c)}});
        });
  auto hypervisors = [core, tokens](bool detail) {
    return [core, tokens, detail](const http::Request& req, http::Response& res) {
      Ctx c;
      if (!Begin(req, res, tokens, false, "GET /v2.1/os-hypervisors", &c)) return;
      auto hosts = core->ListAllHosts();
      if (!hosts.ok()) return NovaError(res, hosts.status());
      json out = json::array();
      const std::string pattern = req.get_param_value("hypervisor_hostname_pattern");
      for (const auto& h : *hosts) {
        if (!pattern.empty() && h.inventory().hostname().find(pattern) == std::string::npos)
          continue;
        out.push_back(HypervisorJson(h, c, detail));
      }
      Reply(res, {{"hypervisors", out}});
    };
  };
  s.Get("/v2.1/os-hypervisors", NovaGate(tokens, false, "GET /v2.1/os-hypervisors"),
        hypervisors(false));
  s.Get("/v2.1/os-hypervisors/detail", NovaGate(tokens, false, "GET /v2.1/os-hypervisors"),
        hypervisors(true));
  // Before /os-hypervisors/{id}, which would take "statistics" for an id.
  s.Get("/v2.1/os-hypervisors/statistics",
        NovaGate(tokens, false, "GET /v2.1/os-hypervisors/statistics"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-hypervisors/statistics", &c)) return;
          auto hosts = core->ListAllHosts();
          if (!hosts.ok()) return NovaError(res, hosts.status());
          // The sums of what GET /os-hypervisors/detail shows for each host.
          json sum = {{"count", 0}};
          for (const char* k : {"vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
                                "local_gb_used", "free_ram_mb", "free_disk_gb", "current_workload",
                                "running_vms", "disk_available_least"}) {
            sum[k] = 0;
          }
          for (const auto& h : *hosts) {
            const json hv = HypervisorJson(h, c, true);
            sum["count"] = sum["count"].get<int64_t>() + 1;
            for (auto& [k, v] : sum.items()) {
              if (k != "count") v = v.get<int64_t>() + hv[k].get<int64_t>();
            }
          }
          Reply(res, {{"hypervisor_statistics", sum}});
        });
  s.Get(R"(/v2.1/os-hypervisors/([^/]+)/uptime)",
        NovaGate(tokens, false, "GET /v2.1/os-hypervisors/{id}/uptime"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-hypervisors/{id}/uptime", &c)) return;
          if (auto h = HostById(core, req.matches[1]); !h.ok()) {
            return NovaError(res,
                             absl::NotFoundError(absl::StrCat("Hypervisor with ID ", req.matches[1],
                                                              " could not be found.")));
          }
          // Nova's answer for a driver without host uptime; the agents do not report it.
          NovaErrorReply(
              res, absl::UnimplementedError("Virt driver does not implement uptime function."),
              501);
        });
  s.Get(R"(/v2.1/os-hypervisors/([^/]+))", NovaGate(tokens, false, "GET /v2.1/os-hypervisors/{id}"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-hypervisors/{id}", &c)) return;
          auto h = HostById(core, req.matches[1]);
          if (!h.ok()) {
            return NovaError(res,
                             absl::NotFoundError(absl::StrCat("Hypervisor with ID ", req.matches[1],
                                                              " could not be found.")));
          }
          Reply(res, {{"hypervisor", HypervisorJson(*h, c, true)}});
        });
  s.Get(R"(/v2.1/servers/([^/]+)/os-instance-actions)",
        NovaGate(tokens, false, "GET /v2.1/servers/{id}/os-instance-actions"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/servers/{id}/os-instance-actions", &c)) {
            return;
          }
          if (auto st = NoPagingParams(req); !st.ok()) return NovaError(res, st);
          const std::string id = req.matches[1];
          if (auto st = CheckNovaServerId(id); !st.ok()) return NovaError(res, st);
          if (auto i = core->GetInstance(id); !i.ok()) return NovaError(res, i.status());
          sv1::ListMigrationsRequest r;
          r.set_instance_uuid(id);
          r.set_page_size(1000);
          json out = json::array();
          do {  // newest first, as Nova lists actions
            auto list = core->ListMigrations(r);
            if (!list.ok()) return NovaError(res, list.status());
            for (const auto& m : list->migrations()) out.push_back(ActionJson(m, c, false));
            r.set_page_token(list->next_page_token());
          } while (!r.page_token().empty());
          Reply(res, {{"instanceActions", out}});
        });
  s.Get(R"(/v2.1/servers/([^/]+)/os-instance-actions/([^/]+))",
        NovaGate(tokens, false, "GET /v2.1/servers/{id}/os-instance-actions/{request_id}"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false,
                     "GET /v2.1/servers/{id}/os-instance-actions/{request_id}", &c)) {
            return;
          }
          const std::string id = req.matches[1], request_id = req.matches[2];
          if (auto st = CheckNovaServerId(id); !st.ok()) return NovaError(res, st);
          if (auto i = core->GetInstance(id); !i.ok()) return NovaError(res, i.status());
          const absl::Status not_found = absl::NotFoundError(absl::StrCat(
              "Action for request_id ", Printable(request_id), " on instance ", id, " not found"));
          const std::string uuid =
              absl::StartsWith(request_id, "req-") ? request_id.substr(4) : std::string();
          if (!IsUuid(uuid)) return NovaError(res, not_found);
          auto m = core->GetMigration(uuid, true);
          if (!m.ok() && m.status().code() != absl::StatusCode::kNotFound) {
            return NovaError(res, m.status());
          }
          if (!m.ok() || m->instance_uuid() != id) return NovaError(res, not_found);
          Reply(res, {{"instanceAction", ActionJson(*m, c, true)}});
        });
  // No host aggregates: hosts carry no aggregate or zone (all are in the zone "nova").
  s.Get("/v2.1/os-aggregates", NovaGate(tokens, false, "GET /v2.1/os-aggregates"),
        [tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-aggregates", &c)) return;
          Reply(res, {{"aggregates", json::array()}});
        });
  s.Get(R"(/v2.1/os-aggregates/([^/]+))", NovaGate(tokens, false, "GET /v2.1/os-aggregates/{id}"),
        [tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/os-aggregates/{id}", &c)) return;
          NovaError(res, absl::NotFoundError(absl::StrCat("Aggregate ", Printable(req.matches[1]),
                                                          " could not be found.")));
        });
  auto zones = [core, tokens](bool detail) {
    return [core, tokens, detail](const http::Request& req, http::Response& res) {
      Ctx c;
      if (!Begin(req, res, tokens, false, "GET /v2.1/os-availability-zone", &c)) return;
      auto hosts = core->ListAllHosts();
      if (!hosts.ok()) return NovaError(res, hosts.status());
      if (hosts->empty()) return Reply(res, {{"availabilityZoneInfo", json::array()}});
      // As Nova: the zone is available while one of its services is enabled; per service,
      // available = up (reporting) and active = enabled.
      bool available = false;
      json per_host = json::object();
      for (const auto& h : *hosts) {
        available = available || h.enabled();
        per_host[h.inventory().hostname()] = {{"nova-compute",
                                               {{"available", h.up()},
                                                {"active", h.enabled()},
                                                {"updated_at", Iso(h.last_report_at())}}}};
      }
      Reply(res, {{"availabilityZoneInfo",
                   json::array({{{"zoneName", "nova"},
                                 {"zoneState", {{"available", available}}},
                                 {"hosts", detail ? per_host : json(nullptr)}}})}});
    };
  };
  s.Get("/v2.1/os-availability-zone", NovaGate(tokens, false, "GET /v2.1/os-availability-zone"),
        zones(false));
  s.Get("/v2.1/os-availability-zone/detail",
        NovaGate(tokens, false, "GET /v2.1/os-availability-zone"), zones(true));
  s.Get("/v2.1/limits", NovaGate(tokens, false, "GET /v2.1/limits"),
        [core, tokens](const http::Request& req, http::Response& res) {
          Ctx c;
          if (!Begin(req, res, tokens, false, "GET /v2.1/limits", &c)) return;
          int64_t instances = 0, cores = 0, ram = 0;
          sv1::ListInstancesRequest r;
          r.set_page_size(1000);
          do {
            auto list = core->ListInstances(r);
            if (!list.ok()) return NovaError(res, list.status());
            for (const auto& i : list->instances()) {
              if (i.missing()) continue;
              ++instances;
              cores += i.vcpus();
              ram += static_cast<int64_t>(i.memory_mib());
            }
            r.set_page_token(list->next_page_token());
          } while (!r.page_token().empty());
          // No quotas: instances, cores and RAM are unlimited (-1); what this API cannot create
          // (key pairs, server groups, metadata) has the limit 0.
          json abs = {{"maxTotalInstances", -1},    {"maxTotalCores", -1},
                      {"maxTotalRAMSize", -1},      {"maxTotalKeypairs", 0},
                      {"maxServerMeta", 0},         {"maxServerGroups", 0},
                      {"maxServerGroupMembers", 0}, {"totalInstancesUsed", instances},
                      {"totalCoresUsed", cores},    {"totalRAMUsed", ram},
                      {"totalServerGroupsUsed", 0}};
          if (c.minor < 36) {
            abs["maxSecurityGroups"] = 0;
            abs["maxSecurityGroupRules"] = 0;
            abs["maxTotalFloatingIps"] = 0;
            abs["totalSecurityGroupsUsed"] = 0;
            abs["totalFloatingIpsUsed"] = 0;
          }
          if (c.minor < 39) abs["maxImageMeta"] = 0;
          if (c.minor < 57) {
            abs["maxPersonality"] = 0;
            abs["maxPersonalitySize"] = 0;
          }
          Reply(res, {{"limits", {{"rate", json::array()}, {"absolute", abs}}}});
        });
}

}  // namespace livemig::sched
