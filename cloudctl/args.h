// cloudctl's command line: the CLI11 application (every command, option and help text) and the
// checks of the values given (UUIDs, host names, ids, number ranges), as one function that turns
// argv into a Command without connecting anywhere. cloudctl_main.cc runs the Command; the fuzz
// target (integration_tests/fuzz/cli_args_fuzzer.cc) and the tests call ParseCommandLine alone.
#ifndef LIVEMIG_CLOUDCTL_ARGS_H_
#define LIVEMIG_CLOUDCTL_ARGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "cloudctl/config.h"
#include "common/validate.h"

namespace livemig::cloudctl {

// The exit code of a usage error: ExitCodeFor(kInvalidArgument) (common/status_map.h; the
// top-level help documents it).
inline constexpr int kExitUsage = 2;

// Client-side limits (the scheduler enforces the same ones).
inline constexpr uint32_t kMaxLimit = 1000;  // --limit
inline constexpr uint32_t kMaxCompletionTimeoutS = 7 * 24 * 3600;
inline constexpr uint32_t kMaxDowntimeMs = 600000;
inline constexpr uint32_t kMaxBandwidthMibS = 1000000;
inline constexpr uint32_t kMaxParallel = kMaxEvacuationParallel;  // --max-parallel
inline constexpr size_t kMaxTextLength = 255;                     // --requester, --marker
inline constexpr size_t kMaxReasonLength = 1024;                  // --reason

struct MigrateArgs {
  std::string uuid, dest, block = "auto", completion_action = "abort", request_id;
  bool offline = false, allow_post_copy = false, dry_run = false, wait = false;
  uint32_t completion_timeout = 0, max_downtime = 0, bandwidth = 0;
  // Whether each optional value was given (else the scheduler's default applies).
  bool has_completion_timeout = false, has_completion_action = false, has_max_downtime = false,
       has_bandwidth = false;
};

struct EvacuateArgs {
  std::string host, target, block = "auto", request_id;
  uint32_t max_parallel = 0;
  bool wait = false;
};

// One parsed command line. `command` is the subcommand's name ("live-migration",
// "migration-list", ...); the fields it uses are filled.
struct Command {
  std::string command;
  Flags flags;
  bool json = false;
  MigrateArgs migrate;                // live-migration
  EvacuateArgs evacuate;              // host-evacuate-live
  std::vector<std::string> statuses;  // migration-list --status
  std::string host;                   // host-* positional; --host filters of the lists
  std::string instance;               // migration-list --instance; instance-show's uuid
  std::string id;                     // migration-* and evacuation-show / -cancel ids
  std::string reason;      // migration-abort / -resolve / host-disable / evacuation-cancel --reason
  std::string running_on;  // migration-resolve --running-on
  std::string status_filter;  // host-list --status
  std::string state_filter;   // host-list --state
  std::string marker;
  uint32_t limit = 0;  // 0: the scheduler's default
};

struct ParseResult {
  // false: cloudctl ends with `exit_code` after printing `out` (stdout: --help, --version) and
  // `err` (stderr: what is wrong and a hint). true: run `command`.
  bool run = false;
  int exit_code = 0;
  std::string out, err;
  Command command;
};

// Parses argv (argv[0] is the program name). Never throws; never touches the network or files
// (the config file is read later by ResolveSettings). A usage error exits with
// kExitUsage and an `err` that names the bad argument.
ParseResult ParseCommandLine(const std::vector<std::string>& argv);

}  // namespace livemig::cloudctl

#endif  // LIVEMIG_CLOUDCTL_ARGS_H_
