// The one place where errors are mapped between absl::Status, gRPC status and HTTP codes,
// following the error table of docs/DESIGN.md § Errors:
//
//   InvalidArgument 400, NotFound 404, Aborted 409 (already migrating / concurrent change),
//   FailedPrecondition 409, Unauthenticated 401, PermissionDenied 403, Unavailable 503,
//   DeadlineExceeded 504; anything else 500.
#ifndef LIVEMIG_COMMON_STATUS_MAP_H_
#define LIVEMIG_COMMON_STATUS_MAP_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"
#include "proto/common.pb.h"

namespace livemig {

// absl::Status → grpc::Status with the same code and message, and its ErrorReason (WithReason)
// in the details as a google.rpc.ErrorInfo (domain "livemig").
grpc::Status ToGrpcStatus(const absl::Status& status);

// grpc::Status → absl::Status; `what` names the call for the message, e.g.
// "PreLiveMigration on host-b". An empty message gets a description of the code. The reason in
// the details, if any, is kept (ReasonOf).
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view what = "");

// Attaches a machine-readable reason to an error (an OK status is returned as is). Decisions
// about another process's error use ReasonOf, never the message's text.
absl::Status WithReason(absl::Status status, v1::ErrorReason reason);
// The reason attached by WithReason (here or in the process that answered a gRPC call);
// ERROR_REASON_UNSPECIFIED for none.
v1::ErrorReason ReasonOf(const absl::Status& status);

// The HTTP status code for a status code (200 for OK).
int HttpCodeFor(absl::StatusCode code);

// The reverse of HttpCodeFor, for REST clients (unknown codes → kUnknown).
absl::StatusCode StatusCodeForHttp(int http_code);

// The process exit code cloudctl uses for a status (0 OK; documented in cloudctl --help).
int ExitCodeFor(absl::StatusCode code);

}  // namespace livemig

#endif  // LIVEMIG_COMMON_STATUS_MAP_H_
