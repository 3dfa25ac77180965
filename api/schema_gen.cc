#include "api/schema_gen.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "proto/scheduler.pb.h"
#include "scheduler/api_names.h"

namespace livemig::api {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using json = nlohmann::ordered_json;
namespace sv1 = ::livemig::scheduler::v1;

// The messages the REST API reads (request bodies) and writes (answers).
std::vector<const Descriptor*> Roots() {
  return {sv1::LiveMigrateRequest::descriptor(),
          sv1::LiveMigrateResponse::descriptor(),
          sv1::CheckMigrationRequest::descriptor(),
          sv1::CheckMigrationResponse::descriptor(),
          sv1::Migration::descriptor(),
          sv1::AbortMigrationRequest::descriptor(),
          sv1::AbortMigrationResponse::descriptor(),
          sv1::ForceCompleteMigrationRequest::descriptor(),
          sv1::ForceCompleteMigrationResponse::descriptor(),
          sv1::ResolveMigrationRequest::descriptor(),
          sv1::ResolveMigrationResponse::descriptor(),
          sv1::ListHostsResponse::descriptor(),
          sv1::Host::descriptor(),
          sv1::SetHostEnabledRequest::descriptor(),
          sv1::EvacuateHostRequest::descriptor(),
          sv1::Evacuation::descriptor(),
          sv1::ListEvacuationsResponse::descriptor(),
          sv1::CancelEvacuationRequest::descriptor(),
          sv1::ListInstancesResponse::descriptor(),
          sv1::Instance::descriptor()};
}

// Fields the server always prints (proto3 JSON omits a field at its default value, so only
// fields that are never empty, zero or unset in an answer are required). Checked against real
// answers by //integration_tests/rest.
const std::map<std::string, std::set<std::string>>& Required() {
  static const auto* const kRequired = new std::map<std::string, std::set<std::string>>{
      {"livemig.scheduler.v1.Migration",
       {"id", "number", "instance_uuid", "source_host", "status", "step", "requester", "created_at",
        "updated_at"}},
      {"livemig.scheduler.v1.MigrationEvent", {"seq", "step", "outcome", "started_at"}},
      {"livemig.scheduler.v1.Host", {"inventory", "last_report_at"}},
      {"livemig.v1.HostInventory", {"hostname", "hypervisor_type"}},
      {"livemig.scheduler.v1.Instance", {"uuid", "name", "host", "updated_at"}},
      {"livemig.scheduler.v1.Evacuation", {"id", "host", "status", "created_at", "updated_at"}},
      {"livemig.scheduler.v1.EvacuationItem", {"instance_uuid", "outcome"}},
      {"livemig.scheduler.v1.HostCheck", {"host"}},
      {"livemig.v1.CheckResult", {"name"}},
      {"livemig.scheduler.v1.CheckMigrationResponse", {"instance_uuid"}},
      {"livemig.scheduler.v1.AbortMigrationResponse", {"migration"}},
      {"livemig.scheduler.v1.ForceCompleteMigrationResponse", {"migration"}},
      {"livemig.scheduler.v1.ResolveMigrationResponse", {"migration"}},
      // Request bodies.
      {"livemig.scheduler.v1.CheckMigrationRequest", {"instance_uuid"}},
      {"livemig.scheduler.v1.SetHostEnabledRequest", {"enabled"}},
      {"livemig.scheduler.v1.ResolveMigrationRequest", {"running_on"}},
  };
  return *kRequired;
}

// String fields that hold a UUID whenever they are set.
const std::set<std::string>& Uuids() {
  static const auto* const kUuids = new std::set<std::string>{
      "livemig.scheduler.v1.Migration.id",
      "livemig.scheduler.v1.Migration.instance_uuid",
      "livemig.scheduler.v1.Migration.evacuation_id",
      "livemig.scheduler.v1.Instance.uuid",
      "livemig.scheduler.v1.Evacuation.id",
      "livemig.scheduler.v1.CancelEvacuationRequest.evacuation_id",
      "livemig.scheduler.v1.EvacuationItem.instance_uuid",
      "livemig.scheduler.v1.EvacuationItem.migration_id",
      "livemig.scheduler.v1.CheckMigrationResponse.instance_uuid",
      "livemig.scheduler.v1.CheckMigrationRequest.instance_uuid",
      "livemig.scheduler.v1.LiveMigrateRequest.instance_uuid",
      "livemig.v1.DomainInfo.uuid",
  };
  return *kUuids;
}

std::string Ref(const std::string& name) { return "#/components/schemas/" + name; }

class Generator {
 public:
  json Run() {
    for (const Descriptor* d : Roots()) Message(d);
    return out_;
  }

 private:
  // The schema's name: the short name, unique across the packages (a clash is a bug here).
  std::string NameOf(const std::string& short_name, const std::string& full_name) {
    auto [it, inserted] = names_.emplace(short_name, full_name);
    if (!inserted && it->second != full_name) {
      throw std::runtime_error("two protos named " + short_name + ": " + it->second + " and " +
                               full_name);
    }
    return short_name;
  }

  std::string Enum(const EnumDescriptor* e) {
    const std::string name = NameOf(e->name(), e->full_name());
    if (out_.contains(name)) return name;
    json values = json::array();
    // The zero value is never printed (proto3 JSON omits defaults).
    for (int i = 0; i < e->value_count(); ++i) {
      if (e->value(i)->number() != 0) values.push_back(sched::ApiEnumName(e->value(i)));
    }
    out_[name] = {{"type", "string"}, {"enum", values}, {"x-proto", e->full_name()}};
    return name;
  }

  json Scalar(const FieldDescriptor* f) {
    switch (f->type()) {
      case FieldDescriptor::TYPE_BOOL:
        return {{"type", "boolean"}};
      case FieldDescriptor::TYPE_STRING:
        if (Uuids().count(f->full_name())) return {{"type", "string"}, {"format", "uuid"}};
        return {{"type", "string"}};
      case FieldDescriptor::TYPE_BYTES:
        return {{"type", "string"}, {"format", "byte"}};
      case FieldDescriptor::TYPE_INT32:
      case FieldDescriptor::TYPE_SINT32:
      case FieldDescriptor::TYPE_SFIXED32:
        return {{"type", "integer"}, {"format", "int32"}};
      case FieldDescriptor::TYPE_UINT32:
      case FieldDescriptor::TYPE_FIXED32:
        return {{"type", "integer"}, {"format", "int32"}, {"minimum", 0}};
      // proto3 JSON prints 64-bit integers as decimal strings.
      case FieldDescriptor::TYPE_INT64:
      case FieldDescriptor::TYPE_SINT64:
      case FieldDescriptor::TYPE_SFIXED64:
        return {{"type", "string"}, {"format", "int64"}, {"pattern", "^-?[0-9]+$"}};
      case FieldDescriptor::TYPE_UINT64:
      case FieldDescriptor::TYPE_FIXED64:
        return {{"type", "string"}, {"format", "uint64"}, {"pattern", "^[0-9]+$"}};
      case FieldDescriptor::TYPE_DOUBLE:
        return {{"type", "number"}, {"format", "double"}};
      case FieldDescriptor::TYPE_FLOAT:
        return {{"type", "number"}, {"format", "float"}};
      case FieldDescriptor::TYPE_ENUM:
        return {{"$ref", Ref(Enum(f->enum_type()))}};
      case FieldDescriptor::TYPE_MESSAGE:
      case FieldDescriptor::TYPE_GROUP: {
        const Descriptor* d = f->message_type();
        if (d->full_name() == "google.protobuf.Timestamp") {
          return {{"type", "string"}, {"format", "date-time"}};
        }
        return {{"$ref", Ref(Message(d))}};
      }
    }
    throw std::runtime_error("unhandled field type of " + f->full_name());
  }

  json Field(const FieldDescriptor* f) {
    if (f->is_map()) {
      return {{"type", "object"}, {"additionalProperties", Scalar(f->message_type()->map_value())}};
    }
    if (f->is_repeated()) return {{"type", "array"}, {"items", Scalar(f)}};
    return Scalar(f);
  }

  std::string Message(const Descriptor* d) {
    const std::string name = NameOf(d->name(), d->full_name());
    if (out_.contains(name)) return name;
    out_[name] = json::object();  // placeholder: recursion stops here
    json props = json::object();
    for (int i = 0; i < d->field_count(); ++i) {
      props[d->field(i)->name()] = Field(d->field(i));
    }
    json schema = {{"type", "object"},
                   {"properties", props},
                   {"additionalProperties", false},
                   {"x-proto", d->full_name()}};
    auto req = Required().find(d->full_name());
    if (req != Required().end()) {
      json names = json::array();
      for (const std::string& n : req->second) {
        if (d->FindFieldByName(n) == nullptr) {
          throw std::runtime_error("required field " + n + " is not a field of " + d->full_name());
        }
        names.push_back(n);
      }
      schema["required"] = names;
    }
    out_[name] = schema;
    return name;
  }

  json out_ = json::object();
  std::map<std::string, std::string> names_;
};

}  // namespace

json ProtoSchemas() { return Generator().Run(); }

json WithProtoSchemas(json doc) {
  json& schemas = doc["components"]["schemas"];
  if (!schemas.is_object()) schemas = json::object();
  for (auto it = schemas.begin(); it != schemas.end();) {
    if (it->is_object() && it->contains("x-proto")) {
      it = schemas.erase(it);
    } else {
      ++it;
    }
  }
  const json generated = ProtoSchemas();
  for (const auto& [name, schema] : generated.items()) {
    if (schemas.contains(name)) {
      throw std::runtime_error("hand-written schema " + name + " has the name of a proto");
    }
    schemas[name] = schema;
  }
  return doc;
}

}  // namespace livemig::api
