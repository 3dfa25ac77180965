#include "scheduler/api_names.h"

#include <algorithm>
#include <cctype>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/migration_status.h"
#include "google/protobuf/util/json_util.h"
#include "proto/common.pb.h"
#include "scheduler/convert.h"

namespace livemig::sched {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;

// "MigrationStep" -> "MIGRATION_STEP_": the prefix every value of an enum carries (proto style).
std::string ValuePrefix(const EnumDescriptor* e) {
  std::string out;
  for (char c : e->name()) {
    if (std::isupper(static_cast<unsigned char>(c)) && !out.empty()) out += '_';
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out + "_";
}

// Walks printed proto3 JSON `j` of message `d`, replacing each enum value by `rename(value)`.
template <typename Json, typename Rename>
void RenameEnums(Json& j, const Descriptor* d, const Rename& rename) {
  if (!j.is_object()) return;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const FieldDescriptor* f = d->FindFieldByName(it.key());
    for (int i = 0; f == nullptr && i < d->field_count(); ++i) {
      if (d->field(i)->json_name() == it.key()) f = d->field(i);
    }
    if (f == nullptr) continue;
    const FieldDescriptor* value_field = f->is_map() ? f->message_type()->map_value() : f;
    auto one = [&](Json& v) {
      if (value_field->type() == FieldDescriptor::TYPE_ENUM && v.is_string()) {
        rename(value_field->enum_type(), v);
      } else if (value_field->type() == FieldDescriptor::TYPE_MESSAGE) {
        RenameEnums(v, value_field->message_type(), rename);
      }
    };
    Json& v = it.value();
    if (f->is_map() && v.is_object()) {
      for (auto& [k, mv] : v.items()) one(mv);
    } else if (f->is_repeated() && v.is_array()) {
      for (auto& e : v) one(e);
    } else {
      one(v);
    }
  }
}

}  // namespace

std::string ApiEnumName(const EnumValueDescriptor* v) {
  if (v->type() == v1::MigrationStatus_descriptor()) {
    auto s = FromProtoStatus(static_cast<v1::MigrationStatus>(v->number()));
    if (s.ok()) return ToString(*s);
  }
  std::string name = v->name();
  const std::string prefix = ValuePrefix(v->type());
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

absl::Status CheckEnumFilter(std::string_view field,
                             const google::protobuf::RepeatedField<int>& values,
                             const google::protobuf::EnumDescriptor* e,
                             const std::vector<int>& never_shown) {
  auto shown = [&](int v) {
    return v != 0 && std::find(never_shown.begin(), never_shown.end(), v) == never_shown.end();
  };
  for (int v : values) {
    if (shown(v) && e->FindValueByNumber(v) != nullptr) continue;
    std::vector<std::string> names;
    for (int i = 0; i < e->value_count(); ++i) {
      if (shown(e->value(i)->number())) names.push_back(ApiEnumName(e->value(i)));
    }
    return absl::InvalidArgumentError(absl::StrCat("field '", std::string(field),
                                                   "' has an invalid value ", v, ": use ",
                                                   absl::StrJoin(names, ", ")));
  }
  return absl::OkStatus();
}

const EnumValueDescriptor* FindApiEnumValue(const EnumDescriptor* e, std::string_view name) {
  for (int i = 0; i < e->value_count(); ++i) {
    if (ApiEnumName(e->value(i)) == name) return e->value(i);
  }
  return e->FindValueByName(std::string(name));
}

std::string ToApiJson(const google::protobuf::Message& m, const ApiJsonOptions& options) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = options.always_print_primitive_fields;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok()) out = "{}";
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(out, nullptr, false);
  if (j.is_discarded()) return options.pretty ? out + "\n" : out;
  RenameEnums(j, m.GetDescriptor(), [](const EnumDescriptor* e, nlohmann::ordered_json& v) {
    if (const EnumValueDescriptor* ev = e->FindValueByName(v.get<std::string>())) {
      v = ApiEnumName(ev);
    }
  });
  const auto replace = nlohmann::ordered_json::error_handler_t::replace;
  return options.pretty ? j.dump(2, ' ', false, replace) + "\n" : j.dump(-1, ' ', false, replace);
}

void ApiEnumNamesToProto(nlohmann::json& j, const Descriptor* d) {
  RenameEnums(j, d, [](const EnumDescriptor* e, nlohmann::json& v) {
    if (const EnumValueDescriptor* ev = FindApiEnumValue(e, v.get<std::string>())) {
      v = ev->name();
    }
  });
}

}  // namespace livemig::sched
