// The REST/JSON API and the dashboard, served by the scheduler over HTTP(S) (common/http_server:
// Boost.Beast, every client bounded).
// Thin handlers: parse the request into the same proto messages the gRPC API takes, call ApiCore,
// answer with proto3 JSON (proto field names) and the HTTP status of the one error mapping
// (common/status_map.h). Errors are {"error":{"code":"NOT_FOUND","message":"..."}}.
//
// Routes (api/openapi.json documents them): GET /healthz (open), GET /metrics (reader),
// GET / and /dashboard (the page; its data needs a reader token), /v1/... (bearer token:
// reader for GET, operator for POST/PUT).
#ifndef LIVEMIG_SCHEDULER_REST_SERVER_H_
#define LIVEMIG_SCHEDULER_REST_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "common/http_server.h"
#include "scheduler/api_core.h"
#include "scheduler/auth.h"

namespace livemig::sched {

class RestServer {
 public:
  RestServer(ApiCore* core, const TokenStore* tokens, http::Options options = {});
  ~RestServer();
  // Binds `host:port` (port 0: any free port) and serves in a thread.
  absl::Status Start(const std::string& host, int port);
  int port() const;
  void Stop();

 private:
  void Routes();
  ApiCore* core_;
  const TokenStore* tokens_;
  std::unique_ptr<http::Server> server_;
};

// The embedded dashboard page (scheduler/dashboard/index.html).
extern const char* const kDashboardHtml;

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_REST_SERVER_H_
