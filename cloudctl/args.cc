#include "cloudctl/args.h"

#include <exception>
#include <set>
#include <sstream>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/migration_status.h"
#include "scheduler/rest_parse.h"

namespace livemig::cloudctl {
namespace {

constexpr char kStatusNames[] =
    "accepted, queued, preparing, running, running (post-copy) (or running-post-copy), "
    "post-migrating, completed, failed, cancelled, error";

// ---- help texts ----------------------------------------------------------------------------

constexpr char kTopFooter[] = R"(Server, identity and output:
  The scheduler's address is --server, else $LIVEMIG_SERVER, else `server = ...` in the config
  file (--config, else ~/.config/livemig/cloudctl.conf), else unix:/run/livemig/scheduler-api.sock.
  The config file may also set token, requester, timeout, ca and server-name (`key = value`
  lines).
  TLS: with --ca FILE (else $LIVEMIG_CA, else `ca = ...`), a HOST:PORT server is spoken to over
  TLS and its certificate must be issued by that CA (deploy/pki.sh issue-server) for the host
  of the address, or for --server-name (else $LIVEMIG_SERVER_NAME). Without a CA, HOST:PORT is
  plaintext, which the scheduler accepts on loopback only. A unix: socket never uses TLS.
  --requester (else $LIVEMIG_USER, else $USER) is recorded with every change you make.
  --token (else $LIVEMIG_TOKEN, else `token = ...`) is sent as "authorization: Bearer <token>":
  a reader token may list, show and dry-run; an operator token may also change things.
  Global options work before or after the command: cloudctl host-list --json.

Exit codes:
  0  success
  1  any other error
  2  invalid argument: bad UUID, host name, option or command line
  3  not found: unknown instance, host, migration or evacuation
  4  conflict: the instance is already migrating, or a concurrent change won (retry)
  5  failed precondition: instance not running, host disabled or down, option not
     supported by the hypervisor, wrong state for abort / force-complete / resolve
     (or the guest does not run on exactly the host named to migration-resolve), an
     evacuation that already finished (evacuation-cancel); a dry run whose checks fail
  6  authentication: no or bad token, or a role that may not do this
  7  the scheduler is unreachable, did not answer in time (--timeout), or the TLS
     handshake with it failed (--ca, --server-name)
  8  --wait: the migration (or evacuation) ended failed, cancelled or in error
  130 interrupted while waiting (the migration goes on)

Examples:
  cloudctl host-list
  cloudctl live-migration 3f2b...-e1 host-b --wait
  cloudctl live-migration 3f2b...-e1 --dry-run
  cloudctl migration-list --status running --status post-migrating
  cloudctl migration-show 42
  cloudctl host-disable host-a --reason "BIOS update" && cloudctl host-evacuate-live host-a --wait
  cloudctl evacuation-cancel 5d0c...-7e --reason "maintenance called off"

Run `cloudctl <command> --help` for a command's options and examples.)";

std::string Footer(const std::string& examples) {
  return absl::StrCat(
      "Examples:\n", examples,
      "\n\nGlobal options (--server, --ca, --server-name, --json, --timeout, --token, "
      "--requester, --config) go before or after the command; exit codes: "
      "cloudctl --help.");
}

// CLI11's message with non-printable bytes escaped (it may quote the arguments).
std::string Sanitize(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 400; ++i) {
    const unsigned char ch = static_cast<unsigned char>(s[i]);
    if ((ch >= 0x20 && ch < 0x7f) || ch == '\n') {
      out += static_cast<char>(ch);
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(ch, absl::kZeroPad2));
    }
  }
  return out;
}

absl::Status CheckLength(const std::string& option, const std::string& value, size_t max) {
  if (value.size() <= max) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(option, " must be at most ", max, " characters, got ", value.size()));
}

absl::Status CheckOptionalHost(const std::string& option, const std::string& value) {
  return value.empty() ? absl::OkStatus() : sched::CheckHostname(option, value);
}

// The scheduler's rule for idempotency keys (common/validate.h), checked before connecting.
absl::Status CheckRequestId(const std::string& option, const std::string& value) {
  if (value.empty() || IsValidRequestId(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(option, " must be 1 to ", kMaxRequestIdLength, " printable ASCII characters"));
}

// The checks CLI11 cannot express: the syntax of UUIDs, host names and ids, text lengths.
absl::Status Validate(const Command& c) {
  const std::string& cmd = c.command;
  absl::Status st;
  auto check = [&](absl::Status s) {
    if (st.ok()) st = std::move(s);
  };
  check(CheckLength("--requester", c.flags.requester, kMaxTextLength));
  if (cmd == "live-migration") {
    check(sched::CheckUuid("uuid", c.migrate.uuid));
    check(CheckOptionalHost("dest", c.migrate.dest));
    check(CheckRequestId("--request-id", c.migrate.request_id));
  } else if (cmd == "migration-list") {
    for (const auto& s : c.statuses) {
      if (!ParseMigrationStatus(s)) {
        check(absl::InvalidArgumentError(absl::StrCat(
            "--status '", sched::Printable(s), "' is not a migration status: use ", kStatusNames)));
      }
    }
    check(CheckOptionalHost("--host", c.host));
    if (!c.instance.empty()) check(sched::CheckUuid("--instance", c.instance));
    check(CheckLength("--marker", c.marker, kMaxTextLength));
  } else if (cmd == "migration-show" || cmd == "migration-abort" ||
             cmd == "migration-force-complete" || cmd == "migration-resolve") {
    check(sched::CheckMigrationId(c.id));
    check(CheckLength("--reason", c.reason, kMaxReasonLength));
    if (cmd == "migration-resolve") check(sched::CheckHostname("--running-on", c.running_on));
  } else if (cmd == "host-list" || cmd == "instance-list" || cmd == "evacuation-list") {
    check(CheckOptionalHost("--host", c.host));
    check(CheckLength("--marker", c.marker, kMaxTextLength));
  } else if (cmd == "host-show" || cmd == "host-enable" || cmd == "host-disable") {
    check(sched::CheckHostname("host", c.host));
    check(CheckLength("--reason", c.reason, kMaxReasonLength));
    if (cmd == "host-disable" && c.reason.find_first_not_of(" \t") == std::string::npos) {
      check(absl::InvalidArgumentError("--reason must not be empty"));
    }
  } else if (cmd == "host-evacuate-live") {
    check(sched::CheckHostname("host", c.evacuate.host));
    check(CheckOptionalHost("--target-host", c.evacuate.target));
    if (!c.evacuate.target.empty() && c.evacuate.target == c.evacuate.host) {
      check(absl::InvalidArgumentError("--target-host is the host being evacuated"));
    }
    check(CheckRequestId("--request-id", c.evacuate.request_id));
  } else if (cmd == "evacuation-show" || cmd == "evacuation-cancel") {
    check(sched::CheckEvacuationId(c.id));
    check(CheckLength("--reason", c.reason, kMaxReasonLength));
  } else if (cmd == "instance-show") {
    check(sched::CheckUuid("uuid", c.instance));
  }
  return st;
}

// The bash completion script, generated from the parser itself (commands, their options, which
// options take a value), so it cannot drift from the command line it completes. Values: files for
// --ca and --config, the status names for migration-list --status, the documented words of the
// host-list filters and of --block-migrate / --completion-action; positional ids are not completed
// (that would need the scheduler).
std::string BashCompletion(const CLI::App& app) {
  auto names = [](const CLI::App& a, bool with_value) {
    std::vector<std::string> out;
    for (const CLI::Option* o : a.get_options()) {
      if (o->get_positional()) continue;
      if (with_value && o->get_items_expected_min() == 0) continue;
      for (const std::string& l : o->get_lnames()) out.push_back("--" + l);
    }
    return absl::StrJoin(out, " ");
  };
  std::vector<std::string> commands;
  std::string cases, value_opts = names(app, true);
  for (const CLI::App* s : app.get_subcommands([](const CLI::App*) { return true; })) {
    commands.push_back(s->get_name());
    absl::StrAppend(&cases, "    ", s->get_name(), ") opts=\"", names(*s, false), "\" ;;\n");
    const std::string v = names(*s, true);
    if (!v.empty()) absl::StrAppend(&value_opts, " ", v);
  }
  std::vector<std::string> statuses;
  for (auto st : AllMigrationStatuses()) {
    const std::string name = ToString(st);
    if (name.find(' ') == std::string::npos) statuses.push_back(name);  // not "running (post-copy)"
  }
  std::set<std::string> uniq;
  for (absl::string_view w : absl::StrSplit(value_opts, ' ', absl::SkipEmpty())) {
    uniq.insert(std::string(w));
  }
  return absl::StrCat(
      "# bash completion for cloudctl (generated by `cloudctl completion bash`)\n"
      "_cloudctl() {\n"
      "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
      "  local commands=\"",
      absl::StrJoin(commands, " "),
      "\"\n"
      "  local global=\"",
      names(app, false),
      "\"\n"
      "  local cmd=\"\" i opts=\"\"\n"
      "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      "    case \"${COMP_WORDS[i]}\" in\n"
      "      ",
      absl::StrJoin(uniq, "|"),
      ") ((i++)) ;;\n"
      "      -*) ;;\n"
      "      *) cmd=\"${COMP_WORDS[i]}\"; break ;;\n"
      "    esac\n"
      "  done\n"
      "  case \"$prev\" in\n"
      "    --ca|--config) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n"
      "    --status)\n"
      "      if [[ $cmd == host-list ]]; then COMPREPLY=($(compgen -W \"enabled disabled\" -- "
      "\"$cur\"));\n"
      "      else COMPREPLY=($(compgen -W \"",
      absl::StrJoin(statuses, " "),
      " running-post-copy\" -- \"$cur\")); fi; return ;;\n"
      "    --state) COMPREPLY=($(compgen -W \"up down\" -- \"$cur\")); return ;;\n"
      "    --block-migrate) COMPREPLY=($(compgen -W \"auto yes no\" -- \"$cur\")); return ;;\n"
      "    --completion-action) COMPREPLY=($(compgen -W \"abort force-complete\" -- "
      "\"$cur\")); return ;;\n"
      "  esac\n"
      "  if [[ -z $cmd ]]; then COMPREPLY=($(compgen -W \"$commands $global\" -- \"$cur\")); "
      "return; fi\n"
      "  case \"$cmd\" in\n",
      cases,
      "  esac\n"
      "  COMPREPLY=($(compgen -W \"$opts $global\" -- \"$cur\"))\n"
      "}\n"
      "complete -F _cloudctl cloudctl\n");
}

}  // namespace

ParseResult ParseCommandLine(const std::vector<std::string>& args) {
  ParseResult result;
  CLI::App app{
      "cloudctl: the operator CLI of the live-migration control plane (a client of the\n"
      "scheduler's gRPC API). Live-migrates instances between Xen hosts, follows and steers\n"
      "migrations, manages hosts (disable, enable, evacuate) and shows instances.",
      "cloudctl"};
  app.get_formatter()->column_width(36);
  app.require_subcommand(1);
  app.fallthrough();
  app.footer(kTopFooter);
  app.set_version_flag("--version", "cloudctl 0.1.0");

  Command& c = result.command;
  double timeout_s = 30;
  app.add_option("--server", c.flags.server,
                 "scheduler API address: unix:/path/api.sock or HOST:PORT (env LIVEMIG_SERVER)");
  app.add_option("--ca", c.flags.ca,
                 "CA certificate (PEM) to verify the scheduler's TLS certificate; with it a "
                 "HOST:PORT server is spoken to over TLS (env LIVEMIG_CA)");
  app.add_option("--server-name", c.flags.server_name,
                 "name the scheduler's certificate must hold (default: the host of --server; env "
                 "LIVEMIG_SERVER_NAME)");
  app.add_option("--config", c.flags.config,
                 "config file (default ~/.config/livemig/cloudctl.conf)");
  CLI::Option* timeout_opt =
      app.add_option("--timeout", timeout_s,
                     "deadline of each call in seconds (default 30; --wait applies it per call)");
  app.add_option("--token", c.flags.token, "bearer token (env LIVEMIG_TOKEN)");
  app.add_option("--requester", c.flags.requester,
                 "who you act for, recorded with changes (env LIVEMIG_USER, default $USER)");
  app.add_flag("--json", c.json, "print the API's objects as JSON instead of tables");

  std::set<std::string> commands;
  auto sub = [&](const std::string& name, const std::string& description,
                 const std::string& examples) {
    commands.insert(name);
    CLI::App* s = app.add_subcommand(name, description);
    s->fallthrough();
    s->footer(Footer(examples));
    return s;
  };
  // A list command's paging options: --limit (with `limit_help`) and --marker.
  auto paged = [&](CLI::App* s, const std::string& limit_help) {
    s->add_option("--limit", c.limit, limit_help)->check(CLI::Range(0u, kMaxLimit));
    s->add_option("--marker", c.marker, "next-page token printed by the previous page");
  };

  // live-migration
  CLI::Option *completion_timeout_opt = nullptr, *completion_action_opt = nullptr,
              *max_downtime_opt = nullptr, *bandwidth_opt = nullptr;
  {
    CLI::App* s =
        sub("live-migration",
            "Live-migrate an instance to a host, or to the scheduler's choice "
            "(openstack server migrate --live-migration)",
            "  cloudctl live-migration 33333333-2222-4333-8444-555555555555 host-b --wait\n"
            "  cloudctl live-migration <uuid> --dry-run        # every check, every "
            "candidate host\n"
            "  cloudctl live-migration <uuid> host-b --block-migrate yes "
            "--completion-timeout 600 \\\n"
            "      --completion-action force-complete --allow-post-copy --wait\n"
            "  cloudctl live-migration <uuid> host-b --request-id change-1234   # safe "
            "to retry");
    s->add_option("uuid", c.migrate.uuid, "the instance's UUID")->required();
    s->add_option("dest", c.migrate.dest, "destination host (default: the scheduler chooses)");
    s->add_option("--block-migrate", c.migrate.block,
                  "copy local disks: auto (when storage is not shared), yes or no")
        ->check(CLI::IsMember({"auto", "yes", "no"}))
        ->capture_default_str();
    s->add_flag("--offline", c.migrate.offline,
                "offline migration: the guest is paused during the transfer");
    completion_timeout_opt =
        s->add_option("--completion-timeout", c.migrate.completion_timeout,
                      "seconds the transfer may take before --completion-action applies (0: none)")
            ->check(CLI::Range(0u, kMaxCompletionTimeoutS));
    completion_action_opt =
        s->add_option("--completion-action", c.migrate.completion_action,
                      "when the completion timeout expires: abort or force-complete")
            ->check(CLI::IsMember({"abort", "force-complete"}));
    max_downtime_opt = s->add_option("--max-downtime", c.migrate.max_downtime,
                                     "maximum guest downtime at switch-over, ms")
                           ->check(CLI::Range(1u, kMaxDowntimeMs));
    bandwidth_opt =
        s->add_option("--bandwidth", c.migrate.bandwidth, "bandwidth limit in MiB/s (0: unlimited)")
            ->check(CLI::Range(0u, kMaxBandwidthMibS));
    s->add_flag("--allow-post-copy", c.migrate.allow_post_copy,
                "allow switching to post-copy (no rollback to the source after it starts)");
    s->add_flag("--dry-run", c.migrate.dry_run,
                "run every check for every candidate host (or the given one) and print them; "
                "changes nothing");
    s->add_flag("--wait", c.migrate.wait,
                "follow the migration with a progress bar until it ends; exit 8 unless it "
                "completes");
    s->add_option("--request-id", c.migrate.request_id,
                  "your id for this request: a retry with the same id returns the same "
                  "migration");
  }

  // migration-list
  {
    CLI::App* s =
        sub("migration-list", "List migrations, newest first (openstack server migration list)",
            "  cloudctl migration-list\n"
            "  cloudctl migration-list --status running --status post-migrating\n"
            "  cloudctl migration-list --host host-a --limit 20\n"
            "  cloudctl migration-list --instance <uuid> --json\n"
            "  cloudctl migration-list --limit 20 --marker <token from the previous "
            "page>");
    s->add_option("--status", c.statuses,
                  std::string("only these statuses (repeatable): ") + kStatusNames);
    s->add_option("--host", c.host, "only migrations from or to this host");
    s->add_option("--instance", c.instance, "only migrations of this instance (UUID)");
    paged(s, "page size (default 50, at most 1000)");
  }

  // migration-show / -abort / -force-complete
  {
    CLI::App* s = sub("migration-show",
                      "Show a migration and its step timeline (openstack server migration show)",
                      "  cloudctl migration-show 42\n"
                      "  cloudctl migration-show 0b6f...-9a --json");
    s->add_option("id", c.id, "migration number or UUID")->required();

    CLI::App* a = sub("migration-abort",
                      "Abort a migration that has not reached post-copy; it rolls back to the "
                      "source (openstack server migration abort)",
                      "  cloudctl migration-abort 42\n"
                      "  cloudctl migration-abort 42 --reason \"maintenance window over\"");
    a->add_option("id", c.id, "migration number or UUID")->required();
    a->add_option("--reason", c.reason, "why (recorded with the abort)");

    CLI::App* f = sub("migration-force-complete",
                      "Force a running migration to complete: post-copy if allowed, else pause "
                      "the guest (openstack server migration force complete)",
                      "  cloudctl migration-force-complete 42");
    f->add_option("id", c.id, "migration number or UUID")->required();

    CLI::App* r =
        sub("migration-resolve",
            "Close a migration in error once the guest runs on one host only (destroy or pause the "
            "other copy first)",
            "  cloudctl migration-resolve 42 --running-on host-b --reason \"copy on host-a "
            "destroyed\"\n"
            "The scheduler asks both agents where the guest runs and proceeds only if exactly one\n"
            "of the source and the destination runs it and it is the host you name: the migration\n"
            "becomes completed (destination) or failed (source), the instance is recorded on that\n"
            "host and its memory claim released. Otherwise nothing changes and the answer says\n"
            "what each host reports. Resolving again answers the same.");
    r->add_option("id", c.id, "migration number or UUID")->required();
    r->add_option("--running-on", c.running_on,
                  "the host you see the guest running on (the source or the destination)")
        ->required();
    r->add_option("--reason", c.reason, "why (recorded in the migration's timeline)");
  }

  // hosts
  {
    CLI::App* s = sub("host-list", "List the hosts: enabled/disabled, up/down, memory, migrations",
                      "  cloudctl host-list\n"
                      "  cloudctl host-list --status disabled\n"
                      "  cloudctl host-list --state down --json");
    s->add_option("--status", c.status_filter, "only enabled or disabled hosts")
        ->check(CLI::IsMember({"enabled", "disabled"}));
    s->add_option("--state", c.state_filter, "only up or down hosts")
        ->check(CLI::IsMember({"up", "down"}));
    paged(s, "page size (default 50)");

    CLI::App* sh = sub("host-show", "Show a host: hypervisor, CPU, memory, storage, capabilities",
                       "  cloudctl host-show host-a");
    sh->add_option("host", c.host, "host name")->required();

    CLI::App* d = sub("host-disable",
                      "Disable a host for new migrations and placement (migrations in flight go "
                      "on)",
                      "  cloudctl host-disable host-a --reason \"BIOS update, ticket 1234\"");
    d->add_option("host", c.host, "host name")->required();
    d->add_option("--reason", c.reason, "why (required; shown by host-list and host-show)")
        ->required();

    CLI::App* e = sub("host-enable", "Enable a host again (clears the disabled reason)",
                      "  cloudctl host-enable host-a");
    e->add_option("host", c.host, "host name")->required();
  }

  {
    CLI::App* s = sub("host-evacuate-live",
                      "Live-migrate every instance off a host (novaclient host-evacuate-live); "
                      "disable the host first to keep new instances away",
                      "  cloudctl host-evacuate-live host-a --wait\n"
                      "  cloudctl host-evacuate-live host-a --max-parallel 4 --target-host "
                      "host-c");
    s->add_option("host", c.evacuate.host, "host to evacuate")->required();
    s->add_option("--max-parallel,--max-servers", c.evacuate.max_parallel,
                  "migrations in flight at once (default: the scheduler's per-host limit)")
        ->check(CLI::Range(0u, kMaxParallel));
    s->add_option("--target-host,--destination", c.evacuate.target,
                  "destination for every instance (default: the scheduler chooses per instance)");
    s->add_option("--block-migrate", c.evacuate.block, "copy local disks: auto, yes or no")
        ->check(CLI::IsMember({"auto", "yes", "no"}))
        ->capture_default_str();
    s->add_option("--request-id", c.evacuate.request_id,
                  "your id for this request: a retry with the same id returns the same "
                  "evacuation");
    s->add_flag("--wait", c.evacuate.wait,
                "show each instance's outcome until the evacuation ends; exit 8 unless every "
                "instance moved");
  }

  {
    CLI::App* s = sub("evacuation-list", "List host evacuations, newest first",
                      "  cloudctl evacuation-list\n"
                      "  cloudctl evacuation-list --host host-a");
    s->add_option("--host", c.host, "only evacuations of this host");
    paged(s, "page size");

    CLI::App* sh = sub("evacuation-show", "Show an evacuation and every instance's outcome",
                       "  cloudctl evacuation-show 5d0c...-7e --json");
    sh->add_option("id", c.id, "evacuation id (UUID)")->required();

    CLI::App* x = sub("evacuation-cancel",
                      "Cancel an evacuation: no new migration of it starts (its pending "
                      "instances stay on the host); migrations in flight finish",
                      "  cloudctl evacuation-cancel 5d0c...-7e --reason \"maintenance called "
                      "off\"");
    x->add_option("id", c.id, "evacuation id (UUID)")->required();
    x->add_option("--reason", c.reason, "why (recorded and shown with the evacuation)");
  }

  {
    CLI::App* s = sub("instance-list", "List the instances (domains the agents report)",
                      "  cloudctl instance-list\n"
                      "  cloudctl instance-list --host host-a --json");
    s->add_option("--host", c.host, "only instances on this host");
    paged(s, "page size (default 50)");

    CLI::App* sh = sub("instance-show", "Show an instance: host, state, active migration, disks",
                       "  cloudctl instance-show 33333333-2222-4333-8444-555555555555");
    sh->add_option("uuid", c.instance, "instance UUID")->required();
  }

  std::string shell;
  CLI::App* completion =
      sub("completion", "Print the shell completion script (bash) for cloudctl",
          "  cloudctl completion bash > /etc/bash_completion.d/cloudctl   # deploy/install.sh does "
          "this\n  source <(cloudctl completion bash)");
  completion->add_option("shell", shell, "the shell: bash")
      ->required()
      ->check(CLI::IsMember({"bash"}));

  std::vector<const char*> argv;
  argv.reserve(args.size() + 1);
  for (const auto& a : args) argv.push_back(a.c_str());
  if (argv.empty()) argv.push_back("cloudctl");
  argv.push_back(nullptr);
  const int usage = kExitUsage;
  auto where = [&] {
    std::string w = "cloudctl";
    for (const CLI::App* s : app.get_subcommands()) w = "cloudctl " + s->get_name();
    return w;
  };
  try {
    app.parse(static_cast<int>(argv.size() - 1), argv.data());
  } catch (const CLI::Success& e) {  // --help, --help-all, --version
    std::ostringstream out, err;
    result.exit_code = app.exit(e, out, err);
    result.out = out.str();
    result.err = err.str();
    return result;
  } catch (const CLI::ParseError& e) {
    result.exit_code = usage;
    std::string what = Sanitize(e.what());
    if (app.get_subcommands().empty()) {
      // CLI11 says only "A subcommand is required": name the word that is not a command.
      for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--server" || a == "--config" || a == "--timeout" || a == "--token" ||
            a == "--requester") {
          ++i;
        } else if (a.empty() || a[0] != '-') {
          if (commands.count(a) == 0) {
            what = absl::StrCat("'", Sanitize(a.substr(0, 64)), "' is not a cloudctl command");
          }
          break;
        }
      }
    }
    result.err =
        absl::StrCat("cloudctl: ", what, "\n", "hint: ", where(), " --help shows the usage\n");
    return result;
  }
  for (const CLI::App* s : app.get_subcommands()) c.command = s->get_name();
  if (c.command.empty()) {
    result.exit_code = usage;
    result.err = "cloudctl: no command given; see cloudctl --help\n";
    return result;
  }
  if (c.command == "completion") {  // printed here: needs neither the network nor a config
    result.out = BashCompletion(app);
    return result;
  }
  if (timeout_opt->count() > 0) c.flags.timeout_s = timeout_s;
  if (c.flags.timeout_s && !(*c.flags.timeout_s > 0 && *c.flags.timeout_s <= kMaxTimeoutS)) {
    result.exit_code = usage;
    result.err = absl::StrCat("cloudctl: --timeout must be a positive number of seconds, at most ",
                              kMaxTimeoutS, "\nhint: ", where(), " --help shows the usage\n");
    return result;
  }
  c.migrate.has_completion_timeout = completion_timeout_opt->count() > 0;
  c.migrate.has_completion_action = completion_action_opt->count() > 0;
  c.migrate.has_max_downtime = max_downtime_opt->count() > 0;
  c.migrate.has_bandwidth = bandwidth_opt->count() > 0;
  if (absl::Status st = Validate(c); !st.ok()) {
    result.exit_code = usage;
    result.err = absl::StrCat("cloudctl: ", c.command, ": ", st.message(), "\nhint: ", where(),
                              " --help shows the usage\n");
    return result;
  }
  result.run = true;
  return result;
}

}  // namespace livemig::cloudctl
