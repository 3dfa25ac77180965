// The part of the OpenStack Compute (Nova) API that live migration uses, served under /v2.1 by
// the scheduler's HTTP server, so that the unchanged `openstack` CLI, the SDKs and operators'
// scripts can drive this system (see api/NOVA.md for what is served and each difference).
//
// Every route translates to the same ApiCore call the native APIs use: no rule is copied here.
// Authentication: X-Auth-Token with the same tokens and roles as the bearer tokens.
// Microversions 2.1 .. kNovaMaxVersion are negotiated from OpenStack-API-Version /
// X-OpenStack-Nova-API-Version; others get Nova's 406.
#ifndef LIVEMIG_SCHEDULER_NOVA_API_H_
#define LIVEMIG_SCHEDULER_NOVA_API_H_

#include "absl/status/status.h"
#include "scheduler/api_core.h"
#include "scheduler/auth.h"

namespace livemig::http {
class Server;
struct Response;
}  // namespace livemig::http

namespace livemig::sched {

constexpr int kNovaMaxMinor = 79;  // 2.79

void RegisterNovaApi(http::Server& server, ApiCore* core, const TokenStore* tokens);

// Answers with Nova's error document ({"badRequest": {"code": 400, "message": ...}}) and HTTP
// status `http`.
void NovaErrorReply(http::Response& res, const absl::Status& s, int http);

// The Nova version document (GET / with Accept: application/json, GET /v2.1/).
std::string NovaVersionsJson(const std::string& base_url, bool root);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_NOVA_API_H_
