// Size: the strict JSON and query parsing of both REST APIs, /v1 and Nova's /v2.1; the /v2.1
// part (~190 lines, its own section) could be a file of its own.
#include "scheduler/rest_parse.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/migration_status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "scheduler/api_names.h"
#include "scheduler/convert.h"

namespace livemig::sched {
namespace {

using json = nlohmann::json;
using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

constexpr size_t kMaxReasonLength = 1024;

template <typename... Args>
absl::Status Invalid(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// A JSON value for a message (invalid UTF-8 cannot occur: the parser rejects it).
std::string Shown(const json& v) {
  return Printable(v.dump(-1, ' ', false, json::error_handler_t::replace));
}

std::string Join(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

// The deepest nesting of objects and arrays in `body` (outside strings).
int NestingDepth(absl::string_view body) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

// Parses `body` as one JSON object (an empty body: an empty object).
absl::StatusOr<json> ParseObject(absl::string_view body) {
  if (body.size() > kMaxRequestBody) {
    return Invalid("the request body is too large (at most 1 MiB)");
  }
  if (absl::StripAsciiWhitespace(body).empty()) return json::object();
  if (NestingDepth(body) > kMaxJsonDepth) {
    return Invalid("the request body is not valid JSON for this call: it nests deeper than ",
                   absl::StrCat(kMaxJsonDepth), " levels");
  }
  json j;
  try {
    j = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> from "parse".
    const size_t bracket = what.find("] ");
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    return Invalid("the request body is not valid JSON: ",
                   Printable(what.substr(0, 200)).substr(0, 200));
  }
  if (!j.is_object()) {
    return Invalid("the request body must be a JSON object, got ", Shown(j));
  }
  return j;
}

absl::Status CheckValue(const json& v, const FieldDescriptor* f, const std::string& path);

// Checks the JSON types of `obj` against message `d`: every key a field, every value of the
// field's JSON type and, for integers, within the wire type's range.
absl::Status CheckObject(const json& obj, const Descriptor* d, const std::string& path) {
  if (!obj.is_object()) {
    return Invalid("field '", path, "' must be a JSON object, got ", Shown(obj));
  }
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const FieldDescriptor* f = d->FindFieldByName(it.key());
    for (int i = 0; f == nullptr && i < d->field_count(); ++i) {
      if (d->field(i)->json_name() == it.key()) f = d->field(i);
    }
    if (f == nullptr) {
      std::vector<std::string> names;
      for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
      return Invalid("unknown field '", Printable(Join(path, it.key())), "' (known",
                     path.empty() ? "" : absl::StrCat(" in ", path), ": ",
                     absl::StrJoin(names, ", "), ")");
    }
    const json& v = it.value();
    const std::string where = Join(path, f->name());
    if (v.is_null()) continue;  // proto3 JSON: null is the default value
    if (f->is_repeated()) {
      if (!v.is_array()) return Invalid("field '", where, "' must be a JSON array, got ", Shown(v));
      for (size_t i = 0; i < v.size(); ++i) {
        if (auto st = CheckValue(v[i], f, absl::StrCat(where, "[", i, "]")); !st.ok()) return st;
      }
      continue;
    }
    if (auto st = CheckValue(v, f, where); !st.ok()) return st;
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CheckInteger(const json& v, const std::string& path) {
  constexpr T kMin = std::numeric_limits<T>::min();
  constexpr T kMax = std::numeric_limits<T>::max();
  const std::string range = absl::StrCat("an integer from ", kMin, " to ", kMax);
  bool ok = false;
  if (v.is_number_unsigned()) {
    ok = v.get<uint64_t>() <= static_cast<uint64_t>(kMax);
  } else if (v.is_number_integer()) {
    const int64_t n = v.get<int64_t>();
    ok = n >= 0 ? static_cast<uint64_t>(n) <= static_cast<uint64_t>(kMax)
                : std::is_signed<T>::value && n >= static_cast<int64_t>(kMin);
  } else if (v.is_number_float()) {
    const double x = v.get<double>();
    ok = std::isfinite(x) && x == std::floor(x) && x >= static_cast<double>(kMin) &&
         x <= static_cast<double>(kMax);
  } else if (v.is_string()) {  // proto3 JSON also allows integers as strings
    T n;
    ok = absl::SimpleAtoi(v.get<std::string>(), &n);
  }
  if (!ok) return Invalid("field '", path, "' must be ", range, ", got ", Shown(v));
  return absl::OkStatus();
}

absl::Status CheckValue(const json& v, const FieldDescriptor* f, const std::string& path) {
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_BOOL:
      if (!v.is_boolean()) {
        return Invalid("field '", path, "' must be true or false, got ", Shown(v));
      }
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_STRING:
      if (!v.is_string())
        return Invalid("field '", path, "' must be a JSON string, got ", Shown(v));
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_INT32:
      return CheckInteger<int32_t>(v, path);
    case FieldDescriptor::CPPTYPE_INT64:
      return CheckInteger<int64_t>(v, path);
    case FieldDescriptor::CPPTYPE_UINT32:
      return CheckInteger<uint32_t>(v, path);
    case FieldDescriptor::CPPTYPE_UINT64:
      return CheckInteger<uint64_t>(v, path);
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT:
      if (!v.is_number()) return Invalid("field '", path, "' must be a number, got ", Shown(v));
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      const auto* e = f->enum_type();
      if (v.is_string() && FindApiEnumValue(e, v.get<std::string>()) != nullptr) {
        return absl::OkStatus();
      }
      if ((v.is_number_integer() || v.is_number_unsigned()) &&
          v.get<int64_t>() >= std::numeric_limits<int32_t>::min() &&
          v.get<int64_t>() <= std::numeric_limits<int32_t>::max() &&
          e->FindValueByNumber(static_cast<int>(v.get<int64_t>())) != nullptr) {
        return absl::OkStatus();
      }
      std::vector<std::string> names;
      for (int i = 0; i < e->value_count(); ++i) {
        if (e->value(i)->number() != 0) names.push_back(ApiEnumName(e->value(i)));
      }
      return Invalid("field '", path, "' must be one of ", absl::StrJoin(names, ", "), ", got ",
                     Shown(v));
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      const Descriptor* d = f->message_type();
      if (d->full_name() == "google.protobuf.Timestamp") {
        if (!v.is_string()) {
          return Invalid("field '", path, "' must be an RFC 3339 time string, got ", Shown(v));
        }
        return absl::OkStatus();
      }
      return CheckObject(v, d, path);
    }
  }
  return absl::OkStatus();
}

// ParseJsonBody, also returning the parsed object (for presence checks).
absl::StatusOr<json> ParseBody(absl::string_view body, google::protobuf::Message* msg) {
  absl::StatusOr<json> j = ParseObject(body);
  if (!j.ok()) return j.status();
  if (auto st = CheckObject(*j, msg->GetDescriptor(), ""); !st.ok()) return st;
  json proto_names = *j;
  ApiEnumNamesToProto(proto_names, msg->GetDescriptor());
  google::protobuf::util::JsonParseOptions o;
  auto s = google::protobuf::util::JsonStringToMessage(proto_names.dump(), msg, o);
  if (!s.ok()) {
    return Invalid("the request body is not valid JSON for this call: ",
                   Printable(std::string(s.message())));
  }
  return j;
}

absl::Status CheckLength(absl::string_view field, const std::string& value, size_t max) {
  if (value.size() > max) {
    return Invalid("field '", field, "' must be at most ", absl::StrCat(max), " characters");
  }
  return absl::OkStatus();
}

absl::Status CheckOptions(const v1::MigrationOptions& o, absl::string_view path) {
  if (o.has_downtime_step_delay_s() && o.downtime_step_delay_s() > kMaxDowntimeStepDelayS) {
    return Invalid("field '", path, ".downtime_step_delay_s' must be at most ",
                   absl::StrCat(kMaxDowntimeStepDelayS), " s, got ",
                   absl::StrCat(o.downtime_step_delay_s()));
  }
  return absl::OkStatus();
}

absl::Status CheckOptionalHostname(absl::string_view field, const std::string& value) {
  return value.empty() ? absl::OkStatus() : CheckHostname(field, value);
}

// The only value of query parameter `name` ("" when absent).
absl::StatusOr<std::string> Param(const QueryParams& q, const std::string& name) {
  auto range = q.equal_range(name);
  if (range.first == range.second) return std::string();
  auto second = range.first;
  if (++second != range.second) {
    return Invalid("query parameter '", name, "' is given more than once");
  }
  return range.first->second;
}

#define LIVEMIG_ASSIGN(lhs, expr)     \
  do {                                \
    auto _v = (expr);                 \
    if (!_v.ok()) return _v.status(); \
    lhs = std::move(*_v);             \
  } while (0)

#define LIVEMIG_RETURN(expr)  \
  do {                        \
    absl::Status _s = (expr); \
    if (!_s.ok()) return _s;  \
  } while (0)

absl::StatusOr<bool> BoolParam(const QueryParams& q, const std::string& name) {
  std::string v;
  LIVEMIG_ASSIGN(v, Param(q, name));
  if (v.empty() || v == "false" || v == "0") return false;
  if (v == "true" || v == "1") return true;
  return Invalid("query parameter '", name, "' must be true or false, got '", Printable(v), "'");
}

// Digits only, a positive int64.
bool IsPositiveNumber(absl::string_view s) {
  int64_t n = 0;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return !s.empty() && absl::SimpleAtoi(s, &n) && n > 0;
}

}  // namespace

bool IsUuid(absl::string_view s) { return IsValidUuid(s); }  // common/validate.h

bool IsHostname(absl::string_view s) { return IsValidHostname(s); }

std::string Printable(absl::string_view s) {
  constexpr size_t kMax = 64;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (s.size() > kMax) absl::StrAppend(&out, "... (", s.size(), " bytes)");
  return out;
}

absl::Status CheckUuid(absl::string_view field, absl::string_view value) {
  if (IsUuid(value)) return absl::OkStatus();
  return Invalid(field, " '", Printable(value), "' is not a UUID (8-4-4-4-12 hexadecimal digits)");
}

absl::Status CheckHostname(absl::string_view field, absl::string_view value) {
  if (IsHostname(value)) return absl::OkStatus();
  return Invalid(field, " '", Printable(value),
                 "' is not a valid host name (letters, digits, '.', '_' and '-', at most 253)");
}

absl::Status CheckMigrationId(absl::string_view value) {
  if (IsPositiveNumber(value) || IsUuid(value)) return absl::OkStatus();
  return Invalid("migration id '", Printable(value),
                 "' is neither a migration number nor a migration UUID");
}

absl::Status CheckEvacuationId(absl::string_view value) {
  if (IsUuid(value)) return absl::OkStatus();
  return Invalid("evacuation id '", Printable(value),
                 "' is not a UUID (8-4-4-4-12 hexadecimal digits)");
}

absl::Status ParseJsonBody(absl::string_view body, google::protobuf::Message* msg) {
  return ParseBody(body, msg).status();
}

namespace {

// The body of a request on the migration the path names: the path's id checked first, then the
// body parsed, then the id set on the request.
template <class Request>
absl::StatusOr<Request> ParseOnMigration(absl::string_view migration_id, absl::string_view body) {
  LIVEMIG_RETURN(CheckMigrationId(migration_id));
  Request r;
  LIVEMIG_RETURN(ParseJsonBody(body, &r));
  r.set_migration_id(std::string(migration_id));
  return r;
}

// `limit` (1..kMaxPageSize; absent: the server's default) and `marker` (the previous page's
// next_page_token, at most `max_marker` bytes) of a paged list route.
absl::Status ParsePage(const QueryParams& q, size_t max_marker, uint32_t* page_size,
                       std::string* page_token) {
  std::string limit, marker;
  if (q.count("limit")) {
    LIVEMIG_ASSIGN(limit, Param(q, "limit"));
    int n = 0;
    if (limit.empty() || !absl::ascii_isdigit(static_cast<unsigned char>(limit[0])) ||
        !absl::SimpleAtoi(limit, &n) || n < 1 || n > kMaxPageSize) {
      return Invalid("limit must be a number from 1 to ", absl::StrCat(kMaxPageSize), ", got '",
                     Printable(limit), "'");
    }
    *page_size = static_cast<uint32_t>(n);
  }
  LIVEMIG_ASSIGN(marker, Param(q, "marker"));
  LIVEMIG_RETURN(CheckLength("marker", marker, max_marker));
  *page_token = marker;
  return absl::OkStatus();
}

// A list request's page (page_size, page_token), `max_marker` bytes of marker at most.
template <class Request>
absl::Status ParsePageOf(const QueryParams& q, size_t max_marker, Request* r) {
  uint32_t size = 0;
  LIVEMIG_RETURN(ParsePage(q, max_marker, &size, r->mutable_page_token()));
  if (size > 0) r->set_page_size(size);
  return absl::OkStatus();
}

// A list request's optional ?host= filter.
template <class Request>
absl::Status ParseHostOf(const QueryParams& q, Request* r) {
  std::string host;
  LIVEMIG_ASSIGN(host, Param(q, "host"));
  LIVEMIG_RETURN(CheckOptionalHostname("query parameter 'host':", host));
  r->set_host(host);
  return absl::OkStatus();
}

// The free-text `reason` and the `requester` of a request, each within its length.
template <class Request>
absl::Status CheckReasonAndRequester(const Request& r) {
  LIVEMIG_RETURN(CheckLength("reason", r.reason(), kMaxReasonLength));
  return CheckLength("requester", r.requester(), kMaxTokenLength);
}

}  // namespace

// ---- /v1 ----------------------------------------------------------------------------------

absl::StatusOr<sv1::LiveMigrateRequest> ParseLiveMigrate(absl::string_view instance_uuid,
                                                         absl::string_view body) {
  LIVEMIG_RETURN(CheckUuid("instance", instance_uuid));
  sv1::LiveMigrateRequest r;
  LIVEMIG_RETURN(ParseJsonBody(body, &r));
  if (!r.instance_uuid().empty() && r.instance_uuid() != instance_uuid) {
    return Invalid("field 'instance_uuid' ('", Printable(r.instance_uuid()),
                   "') differs from the instance in the path");
  }
  r.set_instance_uuid(std::string(instance_uuid));
  LIVEMIG_RETURN(CheckOptionalHostname("destination", r.destination()));
  LIVEMIG_RETURN(CheckLength("request_id", r.request_id(), kMaxTokenLength));
  LIVEMIG_RETURN(CheckLength("requester", r.requester(), kMaxTokenLength));
  LIVEMIG_RETURN(CheckOptions(r.options(), "options"));
  return r;
}

absl::StatusOr<sv1::CheckMigrationRequest> ParseCheckMigration(absl::string_view body) {
  sv1::CheckMigrationRequest r;
  LIVEMIG_RETURN(ParseJsonBody(body, &r));
  LIVEMIG_RETURN(CheckUuid("instance_uuid", r.instance_uuid()));
  LIVEMIG_RETURN(CheckOptionalHostname("destination", r.destination()));
  LIVEMIG_RETURN(CheckOptions(r.options(), "options"));
  return r;
}

absl::StatusOr<sv1::AbortMigrationRequest> ParseAbortMigration(absl::string_view migration_id,
                                                               absl::string_view body) {
  sv1::AbortMigrationRequest r;
  LIVEMIG_ASSIGN(r, ParseOnMigration<sv1::AbortMigrationRequest>(migration_id, body));
  LIVEMIG_RETURN(CheckReasonAndRequester(r));
  return r;
}

absl::StatusOr<sv1::ForceCompleteMigrationRequest> ParseForceComplete(
    absl::string_view migration_id, absl::string_view body) {
  sv1::ForceCompleteMigrationRequest r;
  LIVEMIG_ASSIGN(r, ParseOnMigration<sv1::ForceCompleteMigrationRequest>(migration_id, body));
  LIVEMIG_RETURN(CheckLength("requester", r.requester(), kMaxTokenLength));
  return r;
}

absl::StatusOr<sv1::ResolveMigrationRequest> ParseResolveMigration(absl::string_view migration_id,
                                                                   absl::string_view body) {
  sv1::ResolveMigrationRequest r;
  LIVEMIG_ASSIGN(r, ParseOnMigration<sv1::ResolveMigrationRequest>(migration_id, body));
  LIVEMIG_RETURN(CheckHostname("running_on", r.running_on()));
  LIVEMIG_RETURN(CheckReasonAndRequester(r));
  return r;
}

absl::StatusOr<sv1::SetHostEnabledRequest> ParseSetHostEnabled(absl::string_view hostname,
                                                               absl::string_view body) {
  LIVEMIG_RETURN(CheckHostname("host", hostname));
  sv1::SetHostEnabledRequest r;
  json j;
  LIVEMIG_ASSIGN(j, ParseBody(body, &r));
  if (!j.contains("enabled") || j["enabled"].is_null()) {
    return Invalid("field 'enabled' is required: true to enable the host, false to disable it");
  }
  r.set_hostname(std::string(hostname));
  LIVEMIG_RETURN(CheckReasonAndRequester(r));
  return r;
}

absl::StatusOr<sv1::EvacuateHostRequest> ParseEvacuateHost(absl::string_view hostname,
                                                           absl::string_view body) {
  LIVEMIG_RETURN(CheckHostname("host", hostname));
  sv1::EvacuateHostRequest r;
  LIVEMIG_RETURN(ParseJsonBody(body, &r));
  r.set_hostname(std::string(hostname));
  LIVEMIG_RETURN(CheckOptionalHostname("destination", r.destination()));
  if (r.destination() == hostname) {
    return Invalid("field 'destination' is the host being evacuated");
  }
  LIVEMIG_RETURN(CheckLength("request_id", r.request_id(), kMaxTokenLength));
  LIVEMIG_RETURN(CheckLength("requester", r.requester(), kMaxTokenLength));
  LIVEMIG_RETURN(CheckOptions(r.options(), "options"));
  return r;
}

absl::StatusOr<sv1::CancelEvacuationRequest> ParseCancelEvacuation(absl::string_view evacuation_id,
                                                                   absl::string_view body) {
  LIVEMIG_RETURN(CheckEvacuationId(evacuation_id));
  sv1::CancelEvacuationRequest r;
  LIVEMIG_RETURN(ParseJsonBody(body, &r));
  if (!r.evacuation_id().empty() && r.evacuation_id() != evacuation_id) {
    return Invalid("field 'evacuation_id' ('", Printable(r.evacuation_id()),
                   "') differs from the evacuation in the path");
  }
  r.set_evacuation_id(std::string(evacuation_id));
  LIVEMIG_RETURN(CheckReasonAndRequester(r));
  return r;
}

absl::StatusOr<sv1::ListMigrationsRequest> ParseListMigrations(const QueryParams& q) {
  sv1::ListMigrationsRequest r;
  for (auto [it, end] = q.equal_range("status"); it != end; ++it) {
    auto st = ParseMigrationStatus(it->second);
    if (!st) {
      return Invalid("query parameter 'status': unknown status '", Printable(it->second),
                     "': use accepted, queued, preparing, running, running (post-copy), "
                     "post-migrating, completed, failed, cancelled or error");
    }
    r.add_statuses(ToProtoStatus(*st));
  }
  LIVEMIG_RETURN(ParseHostOf(q, &r));
  std::string instance;
  LIVEMIG_ASSIGN(instance, Param(q, "instance"));
  if (!instance.empty()) LIVEMIG_RETURN(CheckUuid("query parameter 'instance':", instance));
  r.set_instance_uuid(instance);
  LIVEMIG_RETURN(ParsePageOf(q, kMaxTokenLength, &r));
  bool events = false;
  LIVEMIG_ASSIGN(events, BoolParam(q, "events"));
  r.set_include_events(events);
  return r;
}

absl::StatusOr<sv1::ListInstancesRequest> ParseListInstances(const QueryParams& q) {
  sv1::ListInstancesRequest r;
  LIVEMIG_RETURN(ParseHostOf(q, &r));
  // Instance page tokens carry the last name (base64): longer than the other markers.
  LIVEMIG_RETURN(ParsePageOf(q, 8192, &r));
  return r;
}

absl::StatusOr<sv1::ListEvacuationsRequest> ParseListEvacuations(const QueryParams& q) {
  sv1::ListEvacuationsRequest r;
  for (auto [it, end] = q.equal_range("status"); it != end; ++it) {
    const auto* v = FindApiEnumValue(sv1::EvacuationStatus_descriptor(), it->second);
    if (v == nullptr || v->number() == sv1::EVACUATION_STATUS_UNSPECIFIED) {
      return Invalid("query parameter 'status': unknown status '", Printable(it->second),
                     "': use running, cancelling, completed, completed_with_errors or cancelled");
    }
    r.add_statuses(static_cast<sv1::EvacuationStatus>(v->number()));
  }
  LIVEMIG_RETURN(ParseHostOf(q, &r));
  LIVEMIG_RETURN(ParsePageOf(q, 1024, &r));
  return r;
}

absl::StatusOr<sv1::ListHostsRequest> ParseListHosts(const QueryParams& q) {
  sv1::ListHostsRequest r;
  LIVEMIG_RETURN(ParsePageOf(q, 1024, &r));
  return r;
}

// ---- /v2.1 (Nova) -------------------------------------------------------------------------

absl::StatusOr<int> ParseMicroversion(absl::string_view openstack_api_version,
                                      absl::string_view nova_api_version, int max_minor) {
  std::string v;
  if (!openstack_api_version.empty()) {
    std::vector<std::string> parts = absl::StrSplit(openstack_api_version, ' ', absl::SkipEmpty());
    v = parts.size() == 2 && parts[0] == "compute" ? parts[1] : "";
  }
  if (v.empty()) v = std::string(nova_api_version);
  if (v.empty()) return 1;
  if (v == "latest") return max_minor;
  int major = 0, minor = 0;
  std::vector<std::string> mm = absl::StrSplit(v, '.');
  if (mm.size() != 2 || !absl::SimpleAtoi(mm[0], &major) || !absl::SimpleAtoi(mm[1], &minor) ||
      major != 2 || minor < 1 || minor > max_minor) {
    return Invalid("Version ", Printable(v),
                   " is not supported by the API. Minimum is 2.1 and maximum is 2.",
                   absl::StrCat(max_minor), ".");
  }
  return minor;
}

absl::Status CheckNovaServerId(absl::string_view server_id) {
  return CheckUuid("server id", server_id);
}

absl::StatusOr<sv1::LiveMigrateRequest> ParseNovaMigrateLive(absl::string_view server_id,
                                                             absl::string_view body, int minor) {
  LIVEMIG_RETURN(CheckNovaServerId(server_id));
  json j;
  LIVEMIG_ASSIGN(j, ParseObject(body));
  if (!j.contains("os-migrateLive")) {
    return Invalid("Only the os-migrateLive action is served by this API");
  }
  if (j.size() != 1) return Invalid("The action body must hold only os-migrateLive");
  const json& a = j["os-migrateLive"];
  if (!a.is_object()) {
    return Invalid("Invalid input for field/attribute os-migrateLive: must be an object, got ",
                   Shown(a));
  }
  static const std::set<std::string> kKnown = {"host", "block_migration", "disk_over_commit",
                                               "force"};
  for (auto it = a.begin(); it != a.end(); ++it) {
    if (!kKnown.count(it.key())) {
      return Invalid("Additional properties are not allowed ('", Printable(it.key()),
                     "' was unexpected) in os-migrateLive");
    }
  }
  sv1::LiveMigrateRequest r;
  r.set_instance_uuid(std::string(server_id));
  if (a.contains("host")) {
    const json& h = a["host"];
    if (h.is_string()) {
      const std::string host = h.get<std::string>();
      if (!host.empty())
        LIVEMIG_RETURN(CheckHostname("Invalid input for field/attribute host:", host));
      r.set_destination(host);
    } else if (!h.is_null()) {
      return Invalid("Invalid input for field/attribute host: must be a string or null, got ",
                     Shown(h));
    }
  }
  if (a.contains("block_migration")) {
    const json& b = a["block_migration"];
    if (b.is_string() && b == "auto" && minor >= 25) {
      r.mutable_options()->set_block_migration(v1::BLOCK_MIGRATION_AUTO);
    } else if (b.is_boolean()) {
      r.mutable_options()->set_block_migration(b.get<bool>() ? v1::BLOCK_MIGRATION_YES
                                                             : v1::BLOCK_MIGRATION_NO);
    } else {
      return Invalid("Invalid input for field/attribute block_migration: ", Shown(b),
                     minor >= 25 ? " (use true, false or \"auto\")" : " (use true or false)");
    }
  }
  for (const char* flag : {"disk_over_commit", "force"}) {
    if (a.contains(flag) && !a[flag].is_boolean() && !a[flag].is_null()) {
      return Invalid("Invalid input for field/attribute ", flag, ": ", Shown(a[flag]),
                     " (use true or false)");
    }
  }
  r.set_requester("nova-api");
  return r;
}

absl::Status ParseNovaForceComplete(absl::string_view server_id, absl::string_view migration_id,
                                    absl::string_view body) {
  LIVEMIG_RETURN(CheckNovaServerId(server_id));
  LIVEMIG_RETURN(CheckMigrationId(migration_id));
  json j;
  LIVEMIG_ASSIGN(j, ParseObject(body));
  if (!j.contains("force_complete") || j.size() != 1) {
    return Invalid("Only the force_complete action is served by this API");
  }
  return absl::OkStatus();
}

absl::StatusOr<NovaServiceUpdate> ParseNovaServiceUpdate(absl::string_view body) {
  json j;
  LIVEMIG_ASSIGN(j, ParseObject(body));
  static const std::set<std::string> kKnown = {"status", "disabled_reason", "forced_down"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!kKnown.count(it.key())) {
      return Invalid("Additional properties are not allowed ('", Printable(it.key()),
                     "' was unexpected)");
    }
  }
  NovaServiceUpdate u;
  if (j.contains("status")) {
    const json& s = j["status"];
    if (s != "enabled" && s != "disabled") {
      return Invalid("Invalid input for field/attribute status: ", Shown(s),
                     " (use \"enabled\" or \"disabled\")");
    }
    u.enabled = s == "enabled";
  }
  if (j.contains("disabled_reason")) {
    const json& r = j["disabled_reason"];
    if (r.is_string()) {
      const std::string reason = r.get<std::string>();
      if (reason.size() > 255) {
        return Invalid("Invalid input for field/attribute disabled_reason: longer than 255");
      }
      u.reason = reason;
    } else if (!r.is_null()) {
      return Invalid("Invalid input for field/attribute disabled_reason: ", Shown(r),
                     " (use a string)");
    }
  }
  if (j.contains("forced_down") && !j["forced_down"].is_boolean()) {
    return Invalid("Invalid input for field/attribute forced_down: ", Shown(j["forced_down"]),
                   " (use true or false)");
  }
  return u;
}

absl::StatusOr<NovaMigrationsQuery> ParseNovaMigrationsQuery(const QueryParams& q) {
  NovaMigrationsQuery out;
  std::string type, status, host, instance, since, limit, marker;
  LIVEMIG_ASSIGN(type, Param(q, "migration_type"));
  if (!type.empty() && type != "live-migration") out.nothing = true;
  if (q.count("status")) {
    LIVEMIG_ASSIGN(status, Param(q, "status"));
    auto st = ParseMigrationStatus(status);
    if (st) {
      out.request.add_statuses(ToProtoStatus(*st));
    } else {
      out.nothing = true;  // Nova: a status no migration has
    }
  }
  LIVEMIG_ASSIGN(host, Param(q, "host"));
  LIVEMIG_RETURN(CheckOptionalHostname("Invalid input for query parameter host:", host));
  out.request.set_host(host);
  LIVEMIG_ASSIGN(instance, Param(q, "instance_uuid"));
  if (!instance.empty()) {
    LIVEMIG_RETURN(CheckUuid("Invalid input for query parameter instance_uuid:", instance));
  }
  out.request.set_instance_uuid(instance);
  if (q.count("changes-since")) {
    LIVEMIG_ASSIGN(since, Param(q, "changes-since"));
    absl::Time t;
    std::string err;
    if (since.size() > 64 || (!absl::ParseTime(absl::RFC3339_full, since, &t, &err) &&
                              !absl::ParseTime("%Y-%m-%dT%H:%M:%S", since, &t, &err))) {
      return Invalid("Invalid input for query parameter changes-since: '", Printable(since),
                     "' is not an ISO 8601 time");
    }
    *out.request.mutable_created_after() = ToProtoTime(t);
  }
  if (q.count("limit")) {
    LIVEMIG_ASSIGN(limit, Param(q, "limit"));
    int n = 0;
    if (limit.empty() || !absl::ascii_isdigit(static_cast<unsigned char>(limit[0])) ||
        !absl::SimpleAtoi(limit, &n) || n < 0) {
      return Invalid("Invalid input for query parameter limit: '", Printable(limit),
                     "' is not a non-negative integer");
    }
    out.limit = std::min(n, kMaxPageSize);
  }
  out.request.set_page_size(static_cast<uint32_t>(std::max(out.limit, 1)));
  if (q.count("marker")) {
    LIVEMIG_ASSIGN(marker, Param(q, "marker"));
    LIVEMIG_RETURN(CheckMigrationId(marker));
    out.marker = marker;
  }
  return out;
}

}  // namespace livemig::sched
