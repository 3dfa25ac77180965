// libFuzzer target for cloudctl's command line (cloudctl/args.h): the input is split at NUL and
// newline bytes into argv[1..] and parsed. ParseCommandLine catches CLI11's parse errors itself
// (the expected path for bad input); any other exception escaping it is a crash here. A result
// must be consistent: run, or an exit code 0 (help, version) or 2 (usage) with a message.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cloudctl/args.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> argv = {"cloudctl"};
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c == '\0' || c == '\n') {
      argv.push_back(cur);
      cur.clear();
      if (argv.size() > 64) break;
    } else {
      cur += c;
    }
  }
  if (!cur.empty() || size == 0) argv.push_back(cur);
  const livemig::cloudctl::ParseResult r = livemig::cloudctl::ParseCommandLine(argv);
  if (r.run) {
    if (r.command.command.empty() || r.exit_code != 0) {
      fprintf(stderr, "run without a command\n");
      abort();
    }
    return 0;
  }
  if (r.exit_code == 2 ? r.err.empty() : (r.exit_code != 0 || r.out.empty())) {
    fprintf(stderr, "inconsistent result: exit %d, out %zu bytes, err '%s'\n", r.exit_code,
            r.out.size(), r.err.c_str());
    abort();
  }
  return 0;
}
