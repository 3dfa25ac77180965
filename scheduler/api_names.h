// The spelling of enum values in the REST API's JSON (answers and request bodies) and in
// cloudctl --json: the one place that decides it, shared by the server's printer and parser,
// cloudctl, and api/openapi.json's generator (//api:schema_gen).
//
// A migration status is Nova's name, as the tables, the database and the REST filters write it
// ("running", "running (post-copy)", "post-migrating"); every other enum value is its proto name
// without the enum's prefix, in lower case: MIGRATION_STEP_LIVE_MIGRATION -> "live_migration"
// (the step names of the database and the metrics), STEP_OUTCOME_SUCCEEDED -> "succeeded",
// DOMAIN_STATE_RUNNING -> "running".
#ifndef LIVEMIG_SCHEDULER_API_NAMES_H_
#define LIVEMIG_SCHEDULER_API_NAMES_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/repeated_field.h"
#include "nlohmann/json.hpp"

namespace livemig::sched {

// The name an answer carries for enum value `v`.
std::string ApiEnumName(const google::protobuf::EnumValueDescriptor* v);

// The value of `e` called `name`: its API name, or (accepted from older clients) its proto name;
// nullptr for neither.
const google::protobuf::EnumValueDescriptor* FindApiEnumValue(
    const google::protobuf::EnumDescriptor* e, std::string_view name);

// Checks the values of a repeated enum filter named `field` (e.g. "statuses"): InvalidArgument
// naming the field, the value and the names accepted (ApiEnumName) for 0 (UNSPECIFIED), a number
// enum `e` lacks, or one of `never_shown` (values the API never answers with, so a filter on them
// could only ever match nothing). The one check of every API filter by an enum.
absl::Status CheckEnumFilter(std::string_view field,
                             const google::protobuf::RepeatedField<int>& values,
                             const google::protobuf::EnumDescriptor* e,
                             const std::vector<int>& never_shown = {});

struct ApiJsonOptions {
  // Print fields at their default values too (cloudctl --json); the REST API omits them.
  bool always_print_primitive_fields = false;
  // Indented, one field a line, with a final newline (cloudctl --json).
  bool pretty = false;
};

// The proto3 JSON of `m` (proto field names; 64-bit integers as strings; RFC 3339 times) with
// every enum value spelled by ApiEnumName.
std::string ToApiJson(const google::protobuf::Message& m, const ApiJsonOptions& options = {});

// Rewrites, in the parsed request body `j` for message `d`, every enum value given by its API
// name to its proto name, so that protobuf's JSON parser reads it. Anything else is left alone.
void ApiEnumNamesToProto(nlohmann::json& j, const google::protobuf::Descriptor* d);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_API_NAMES_H_
