#include "scheduler/api_names.h"

namespace livemig::sched {

std::string ApiEnumName(const google::protobuf::EnumValueDescriptor* v) { return v->name(); }

}  // namespace livemig::sched
