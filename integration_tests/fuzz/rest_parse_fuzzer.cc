// libFuzzer target for the REST and Compute API request parsing (scheduler/rest_parse.h): the
// input's first byte picks a parser; the rest is split at the first newline into a path
// parameter and a JSON body, or read as a query string (a=b&c=d, no percent-decoding: the HTTP
// server decodes before the parsers run). Every parser must return (OK or InvalidArgument with a
// message), never crash, leak, throw or hit undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "scheduler/rest_parse.h"

namespace {

using livemig::sched::QueryParams;

QueryParams Query(absl::string_view text) {
  QueryParams q;
  for (absl::string_view pair : absl::StrSplit(text, '&')) {
    const size_t eq = pair.find('=');
    if (eq == absl::string_view::npos) {
      q.emplace(std::string(pair), "");
    } else {
      q.emplace(std::string(pair.substr(0, eq)), std::string(pair.substr(eq + 1)));
    }
  }
  return q;
}

// A rejected input must say why; anything but InvalidArgument is a bug in the parser.
void Expect(const absl::Status& s) {
  if (s.ok()) return;
  if (s.code() != absl::StatusCode::kInvalidArgument || s.message().empty()) {
    fprintf(stderr, "unexpected status: %s\n", s.ToString().c_str());
    abort();
  }
}

template <typename T>
void Expect(const absl::StatusOr<T>& s) {
  Expect(s.status());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace s = livemig::sched;
  if (size == 0) return 0;
  const uint8_t which = data[0];
  const absl::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t nl = rest.find('\n');
  const absl::string_view param = nl == absl::string_view::npos ? rest : rest.substr(0, nl);
  const absl::string_view body = nl == absl::string_view::npos ? "" : rest.substr(nl + 1);
  switch (which % 20) {
    case 0:
      Expect(s::ParseLiveMigrate(param, body));
      break;
    case 1:
      Expect(s::ParseCheckMigration(rest));
      break;
    case 2:
      Expect(s::ParseAbortMigration(param, body));
      break;
    case 3:
      Expect(s::ParseForceComplete(param, body));
      break;
    case 4:
      Expect(s::ParseSetHostEnabled(param, body));
      break;
    case 5:
      Expect(s::ParseEvacuateHost(param, body));
      break;
    case 6:
      Expect(s::ParseListMigrations(Query(rest)));
      break;
    case 7:
      Expect(s::ParseListEvacuations(Query(rest)));
      break;
    case 8:
      Expect(s::ParseListInstances(Query(rest)));
      break;
    case 9:
      Expect(s::ParseMicroversion(param, body, 79));
      break;
    case 10:
      Expect(s::ParseNovaMigrateLive(param, body, which / 20 % 80));
      break;
    case 11: {
      const size_t sp = param.find(' ');
      Expect(s::ParseNovaForceComplete(
          param.substr(0, sp), sp == absl::string_view::npos ? "" : param.substr(sp + 1), body));
      break;
    }
    case 12:
      Expect(s::ParseNovaServiceUpdate(rest));
      break;
    case 13:
      Expect(s::ParseNovaMigrationsQuery(Query(rest)));
      break;
    case 14:
      Expect(s::CheckUuid("uuid", rest));
      Expect(s::CheckHostname("host", rest));
      break;
    case 15:
      Expect(s::CheckMigrationId(rest));
      Expect(s::CheckEvacuationId(rest));
      Expect(s::ParseCancelEvacuation(param, body));
      break;
    default: {
      // Any body against the largest request message.
      livemig::scheduler::v1::EvacuateHostRequest r;
      Expect(s::ParseJsonBody(rest, &r));
      break;
    }
  }
  return 0;
}
