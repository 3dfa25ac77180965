#include "scheduler/nova_api.h"

#include <openssl/sha.h>

#include "absl/strings/ascii.h"
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
  j["cpu_info"] = json{{"arch", inv.cpu().arch()}, {"model", inv.cpu().model()}}.dump();
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
}

}  // namespace livemig::sched
