#include "scheduler/rest_server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/status_map.h"
#include "nlohmann/json.hpp"
#include "scheduler/api_names.h"
#include "scheduler/convert.h"
#include "scheduler/nova_api.h"
#include "scheduler/rest_parse.h"

namespace livemig::sched {
namespace {

std::string Json(const google::protobuf::Message& m) { return ToApiJson(m); }

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrCat("\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out += c;
        }
    }
  }
  return out;
}

void SendError(http::Response& res, const absl::Status& s) {
  res.status = HttpCodeFor(s.code());
  nlohmann::json body;
  body["error"] = {{"code", absl::StatusCodeToString(s.code())},
                   {"message", std::string(s.message())}};
  // A message may quote the request's bytes: invalid UTF-8 becomes U+FFFD, never an exception.
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

template <typename Msg>
void Send(http::Response& res, const absl::StatusOr<Msg>& r, int ok_status = 200) {
  if (!r.ok()) return SendError(res, r.status());
  res.status = ok_status;
  res.set_content(Json(*r), "application/json");
}

}  // namespace

RestServer::RestServer(ApiCore* core, const TokenStore* tokens, http::Options options)
    : core_(core), tokens_(tokens), server_(std::make_unique<http::Server>(std::move(options))) {
  Routes();
}

RestServer::~RestServer() { Stop(); }

absl::Status RestServer::Start(const std::string& host, int port) {
  return server_->Start(host, port);
}

int RestServer::port() const { return server_->port(); }

void RestServer::Stop() {
  if (server_) server_->Stop();
}

void RestServer::Routes() {
  http::Server& s = *server_;
  auto auth = [this](const http::Request& req, http::Response& res, bool mutating,
                     const std::string& op) -> std::optional<std::string> {
    auto p = tokens_->Check(req.get_header_value("Authorization"), mutating, op);
    if (!p.ok()) {
      SendError(res, p.status());
      if (p.status().code() == absl::StatusCode::kUnauthenticated) {
        res.set_header("WWW-Authenticate", "Bearer");
      }
      return std::nullopt;
    }
    return p->name;
  };
  // The same check on the headers alone: a request it refuses is answered (Connection: close)
  // without reading its body.
  auto need = [auth](bool mutating, const std::string& op) -> http::Gate {
    return [auth, mutating, op](const http::Request& req, http::Response& res) {
      if (auth(req, res, mutating, op)) return true;
      res.close = true;
      return false;
    };
  };

  // Answered without a connection slot: it stays answerable while the caps are reached.
  s.Route(
      "GET", "/healthz",
      [this](const http::Request&, http::Response& res) {
        sv1::ListHostsRequest one;  // a cheap query that needs the database
        one.set_page_size(1);
        auto h = core_->ListHosts(one);
        if (!h.ok()) return SendError(res, h.status());
        res.set_content("{\"status\":\"ok\"}", "application/json");
      },
      nullptr, /*slotless=*/true);
  s.Get("/metrics", need(false, "GET /metrics"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /metrics")) return;
          auto m = core_->MetricsText();
          if (!m.ok()) return SendError(res, m.status());
          res.set_content(*m, "text/plain; version=0.0.4");
        });
  RegisterNovaApi(s, core_, tokens_);
  for (const char* path : {"/", "/dashboard"}) {
    s.Get(path, [path](const http::Request& req, http::Response& res) {
      // The Compute API's version discovery asks the root for JSON; browsers ask for HTML.
      const std::string accept = req.get_header_value("Accept");
      if (std::string(path) == "/" && accept.find("text/html") == std::string::npos &&
          accept.find("application/json") != std::string::npos) {
        res.set_content(NovaVersionsJson("http://" + req.get_header_value("Host"), true),
                        "application/json");
        return;
      }
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'");
      res.set_content(kDashboardHtml, "text/html; charset=utf-8");
    });
  }

  s.Post(R"(/v1/instances/([^/]+)/live-migration)", need(true, "live-migration"),
         [this, auth](const http::Request& req, http::Response& res) {
           auto who = auth(req, res, true, "live-migration");
           if (!who) return;
           auto r = ParseLiveMigrate(req.matches[1], req.body);
           if (!r.ok()) return SendError(res, r.status());
           auto out = core_->LiveMigrate(*r, *who);
           Send(res, out, out.ok() && !out->existing() && !r->dry_run() ? 202 : 200);
         });
  s.Get("/v1/migrations", need(false, "GET /v1/migrations"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/migrations")) return;
          auto r = ParseListMigrations(req.params);
          if (!r.ok()) return SendError(res, r.status());
          auto out = core_->ListMigrations(*r);
          if (!out.ok()) return SendError(res, out.status());
          std::string body = "{\"migrations\":[";
          for (int i = 0; i < out->migrations_size(); ++i) {
            absl::StrAppend(&body, i ? "," : "", Json(out->migrations(i)));
          }
          absl::StrAppend(&body, "],\"next_marker\":\"", Escape(out->next_page_token()), "\"}");
          res.set_content(body, "application/json");
        });
  s.Post("/v1/migrations/check", need(false, "POST /v1/migrations/check"),
         [this, auth](const http::Request& req, http::Response& res) {
           if (!auth(req, res, false, "POST /v1/migrations/check")) return;
           auto r = ParseCheckMigration(req.body);
           if (!r.ok()) return SendError(res, r.status());
           Send(res, core_->CheckMigration(*r));
         });
  s.Get(R"(/v1/migrations/([^/]+))", need(false, "GET /v1/migrations/{id}"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/migrations/{id}")) return;
          if (auto st = CheckMigrationId(req.matches[1]); !st.ok()) {
            return SendError(res, st);
          }
          Send(res, core_->GetMigration(req.matches[1]));
        });
  s.Post(R"(/v1/migrations/([^/]+)/abort)", need(true, "abort"),
         [this, auth](const http::Request& req, http::Response& res) {
           auto who = auth(req, res, true, "abort");
           if (!who) return;
           auto r = ParseAbortMigration(req.matches[1], req.body);
           if (!r.ok()) return SendError(res, r.status());
           Send(res, core_->AbortMigration(*r, *who));
         });
  s.Post(R"(/v1/migrations/([^/]+)/force-complete)", need(true, "force-complete"),
         [this, auth](const http::Request& req, http::Response& res) {
           auto who = auth(req, res, true, "force-complete");
           if (!who) return;
           auto r = ParseForceComplete(req.matches[1], req.body);
           if (!r.ok()) return SendError(res, r.status());
           Send(res, core_->ForceCompleteMigration(*r, *who));
         });
  s.Post(R"(/v1/migrations/([^/]+)/resolve)", need(true, "resolve"),
         [this, auth](const http::Request& req, http::Response& res) {
           auto who = auth(req, res, true, "resolve");
           if (!who) return;
           auto r = ParseResolveMigration(req.matches[1], req.body);
           if (!r.ok()) return SendError(res, r.status());
           Send(res, core_->ResolveMigration(*r, *who));
         });
  s.Get("/v1/hosts", need(false, "GET /v1/hosts"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/hosts")) return;
          auto r = ParseListHosts(req.params);
          if (!r.ok()) return SendError(res, r.status());
          Send(res, core_->ListHosts(*r));
        });
  s.Get(R"(/v1/hosts/([^/]+))", need(false, "GET /v1/hosts/{name}"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/hosts/{name}")) return;
          if (auto st = CheckHostname("host", req.matches[1]); !st.ok()) return SendError(res, st);
          Send(res, core_->GetHost(req.matches[1]));
        });
  s.Put(R"(/v1/hosts/([^/]+)/enabled)", need(true, "host enable/disable"),
        [this, auth](const http::Request& req, http::Response& res) {
          auto who = auth(req, res, true, "host enable/disable");
          if (!who) return;
          auto r = ParseSetHostEnabled(req.matches[1], req.body);
          if (!r.ok()) return SendError(res, r.status());
          Send(res, core_->SetHostEnabled(*r, *who));
        });
  s.Post(R"(/v1/hosts/([^/]+)/evacuate-live)", need(true, "evacuate-live"),
         [this, auth](const http::Request& req, http::Response& res) {
           auto who = auth(req, res, true, "evacuate-live");
           if (!who) return;
           auto r = ParseEvacuateHost(req.matches[1], req.body);
           if (!r.ok()) return SendError(res, r.status());
           Send(res, core_->EvacuateHost(*r, *who), 202);
         });
  s.Get("/v1/evacuations", need(false, "GET /v1/evacuations"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/evacuations")) return;
          auto r = ParseListEvacuations(req.params);
          if (!r.ok()) return SendError(res, r.status());
          Send(res, core_->ListEvacuations(*r));
        });
  s.Get(R"(/v1/evacuations/([^/]+))", need(false, "GET /v1/evacuations/{id}"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/evacuations/{id}")) return;
          if (auto st = CheckEvacuationId(req.matches[1]); !st.ok()) {
            return SendError(res, st);
          }
          Send(res, core_->GetEvacuation(req.matches[1]));
        });
  s.Post(R"(/v1/evacuations/([^/]+)/cancel)", need(true, "cancel evacuation"),
         [this, auth](const http::Request& req, http::Response& res) {
           auto who = auth(req, res, true, "cancel evacuation");
           if (!who) return;
           auto r = ParseCancelEvacuation(req.matches[1], req.body);
           if (!r.ok()) return SendError(res, r.status());
           Send(res, core_->CancelEvacuation(*r, *who));
         });
  s.Get("/v1/instances", need(false, "GET /v1/instances"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/instances")) return;
          auto r = ParseListInstances(req.params);
          if (!r.ok()) return SendError(res, r.status());
          Send(res, core_->ListInstances(*r));
        });
  s.Get(R"(/v1/instances/([^/]+))", need(false, "GET /v1/instances/{uuid}"),
        [this, auth](const http::Request& req, http::Response& res) {
          if (!auth(req, res, false, "GET /v1/instances/{uuid}")) return;
          if (auto st = CheckUuid("instance", req.matches[1]); !st.ok()) {
            return SendError(res, st);
          }
          Send(res, core_->GetInstance(req.matches[1]));
        });
  s.SetErrorRenderer([](const http::Request& req, http::Response& res, const absl::Status& error) {
    // The Compute API's clients expect its error document; everyone else gets ours.
    const bool nova = req.path == "/v2.1" || req.path.rfind("/v2.1/", 0) == 0;
    const int status = res.status;
    if (nova) {
      NovaErrorReply(res, error, status);
    } else {
      SendError(res, error);
    }
    res.status = status;
  });
}

}  // namespace livemig::sched
