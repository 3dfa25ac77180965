// The JSON Schemas of api/openapi.json's components that mirror the protos: derived from the
// compiled descriptors by the rules of proto3's JSON mapping as the REST server prints it
// (proto field names, enums as names, 64-bit integers as strings, Timestamps as RFC 3339,
// default values omitted), so that the document cannot drift from the wire contracts.
// //api:schemas_test checks the committed document against it; `bazel run //api:schema_gen --
// $PWD/api/openapi.json` rewrites the document's generated schemas in place.
#ifndef LIVEMIG_API_SCHEMA_GEN_H_
#define LIVEMIG_API_SCHEMA_GEN_H_

#include "nlohmann/json.hpp"

namespace livemig::api {

// components.schemas entries for every message (and enum) reachable from the REST API's request
// and response messages, keyed by the message's short name; each carries "x-proto" (its full
// name), which marks it as generated.
nlohmann::ordered_json ProtoSchemas();

// `doc` with its generated schemas (those with "x-proto") replaced by ProtoSchemas(), hand-written
// ones kept.
nlohmann::ordered_json WithProtoSchemas(nlohmann::ordered_json doc);

}  // namespace livemig::api

#endif  // LIVEMIG_API_SCHEMA_GEN_H_
