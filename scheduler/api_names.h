// The spelling of enum values in the JSON answers of the REST API (and in cloudctl --json): the
// one place that decides it, shared by the server's printer and api/openapi.json's generator.
#ifndef LIVEMIG_SCHEDULER_API_NAMES_H_
#define LIVEMIG_SCHEDULER_API_NAMES_H_

#include <string>

#include "google/protobuf/descriptor.h"

namespace livemig::sched {

// The name an answer carries for enum value `v`.
std::string ApiEnumName(const google::protobuf::EnumValueDescriptor* v);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_API_NAMES_H_
