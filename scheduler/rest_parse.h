// The REST and Compute (Nova) APIs' request parsing, separate from the HTTP server: JSON bodies,
// path parameters and query parameters become the request protos the API core takes, or an
// InvalidArgument whose message names the offending field. Pure functions (no I/O, no server
// state), so that the HTTP handlers (rest_server.cc, nova_api.cc) and the fuzz target
// (integration_tests/fuzz/rest_parse_fuzzer.cc) run the same code.
//
// What is checked here: the syntax of everything in the request (valid JSON, a JSON object,
// nesting depth, field names and JSON types, integer ranges of the wire types, UUIDs, host names,
// migration and evacuation ids, query numbers). What is not: anything that needs the stores
// (unknown instance, host disabled, ...) and the option ranges ApiCore already enforces for the
// gRPC and REST APIs alike (ApiCore::ValidateOptions).
#ifndef LIVEMIG_SCHEDULER_REST_PARSE_H_
#define LIVEMIG_SCHEDULER_REST_PARSE_H_

#include <cstddef>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/validate.h"
#include "google/protobuf/message.h"
#include "proto/scheduler.pb.h"

namespace livemig::sched {

namespace v1 = ::livemig::v1;
namespace sv1 = ::livemig::scheduler::v1;

// The largest request body the HTTP server reads (larger ones are answered 413).
inline constexpr size_t kMaxRequestBody = 1 << 20;  // 1 MiB
// The deepest JSON nesting a body may have (a request is at most 3 levels deep).
inline constexpr int kMaxJsonDepth = 32;
// Limits of the query parameters.
inline constexpr int kMaxPageSize = 1000;
inline constexpr size_t kMaxTokenLength = 255;  // markers, request ids
// At most this many migrations of one evacuation in flight at once (0: the default).
using ::livemig::kMaxEvacuationParallel;  // common/validate.h
// Longest delay between two downtime steps.
inline constexpr uint32_t kMaxDowntimeStepDelayS = 3600;

// Query parameters: name -> values (the same type as httplib::Params).
using QueryParams = std::multimap<std::string, std::string>;

// 8-4-4-4-12 hexadecimal digits.
bool IsUuid(absl::string_view s);
// A letter or digit, then letters, digits, '.', '_' or '-'; at most 253 characters (as the
// stores require).
bool IsHostname(absl::string_view s);
// A value for an error message: at most 64 characters, non-printable and non-ASCII bytes as \xNN.
std::string Printable(absl::string_view s);

// InvalidArgument naming `field` unless `value` is a UUID / a host name / a migration number or
// UUID / an evacuation UUID.
absl::Status CheckUuid(absl::string_view field, absl::string_view value);
absl::Status CheckHostname(absl::string_view field, absl::string_view value);
absl::Status CheckMigrationId(absl::string_view value);
absl::Status CheckEvacuationId(absl::string_view value);

// Parses a JSON body into `msg` (proto3 JSON; an empty body is an empty message). Checks the
// JSON types against the message's fields first, so that every error names its field.
absl::Status ParseJsonBody(absl::string_view body, google::protobuf::Message* msg);

// ---- /v1 ----------------------------------------------------------------------------------

absl::StatusOr<sv1::LiveMigrateRequest> ParseLiveMigrate(absl::string_view instance_uuid,
                                                         absl::string_view body);
absl::StatusOr<sv1::CheckMigrationRequest> ParseCheckMigration(absl::string_view body);
absl::StatusOr<sv1::AbortMigrationRequest> ParseAbortMigration(absl::string_view migration_id,
                                                               absl::string_view body);
absl::StatusOr<sv1::ForceCompleteMigrationRequest> ParseForceComplete(
    absl::string_view migration_id, absl::string_view body);
// POST /v1/migrations/{id}/resolve {"running_on": .., "reason": .., "requester": ..}
absl::StatusOr<sv1::ResolveMigrationRequest> ParseResolveMigration(absl::string_view migration_id,
                                                                   absl::string_view body);
absl::StatusOr<sv1::SetHostEnabledRequest> ParseSetHostEnabled(absl::string_view hostname,
                                                               absl::string_view body);
absl::StatusOr<sv1::EvacuateHostRequest> ParseEvacuateHost(absl::string_view hostname,
                                                           absl::string_view body);
// GET /v1/migrations?status=..&host=..&instance=..&limit=..&marker=..&events=true
absl::StatusOr<sv1::ListMigrationsRequest> ParseListMigrations(const QueryParams& q);
// POST /v1/evacuations/{id}/cancel {"reason": .., "requester": ..}
absl::StatusOr<sv1::CancelEvacuationRequest> ParseCancelEvacuation(absl::string_view evacuation_id,
                                                                   absl::string_view body);
// GET /v1/evacuations?host=..
absl::StatusOr<sv1::ListEvacuationsRequest> ParseListEvacuations(const QueryParams& q);
// GET /v1/instances?host=..&limit=..&marker=.. (marker: the previous page's next_page_token)
absl::StatusOr<sv1::ListInstancesRequest> ParseListInstances(const QueryParams& q);
// GET /v1/hosts?limit=&marker=
absl::StatusOr<sv1::ListHostsRequest> ParseListHosts(const QueryParams& q);

// ---- /v2.1 (Nova) -------------------------------------------------------------------------

// The microversion from OpenStack-API-Version ("compute 2.x") or X-OpenStack-Nova-API-Version
// ("2.x", "latest"); both empty: 2.1. Returns the minor version; InvalidArgument (answered 406
// by the caller) for a malformed or unsupported version.
absl::StatusOr<int> ParseMicroversion(absl::string_view openstack_api_version,
                                      absl::string_view nova_api_version, int max_minor);
// POST /v2.1/servers/{id}/action with {"os-migrateLive": {...}}.
absl::StatusOr<sv1::LiveMigrateRequest> ParseNovaMigrateLive(absl::string_view server_id,
                                                             absl::string_view body, int minor);
// POST /v2.1/servers/{id}/migrations/{mid}/action with {"force_complete": null}.
absl::Status ParseNovaForceComplete(absl::string_view server_id, absl::string_view migration_id,
                                    absl::string_view body);
// PUT /v2.1/os-services/{id} with {"status": "enabled"|"disabled", "disabled_reason": "..."}.
struct NovaServiceUpdate {
  std::optional<bool> enabled;
  std::optional<std::string> reason;
};
absl::StatusOr<NovaServiceUpdate> ParseNovaServiceUpdate(absl::string_view body);
// GET /v2.1/os-migrations?migration_type=..&status=..&host=..&instance_uuid=..&changes-since=..
// &limit=..&marker=..
struct NovaMigrationsQuery {
  sv1::ListMigrationsRequest request;  // page_token not set: the marker is resolved by the caller
  int limit = kMaxPageSize;            // 0: an empty list
  std::optional<std::string> marker;   // a migration UUID or number
  bool nothing = false;                // a filter that matches nothing (another migration type)
};
absl::StatusOr<NovaMigrationsQuery> ParseNovaMigrationsQuery(const QueryParams& q);
// The server id of /v2.1/servers/{id}/migrations[/{mid}].
absl::Status CheckNovaServerId(absl::string_view server_id);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_REST_PARSE_H_
