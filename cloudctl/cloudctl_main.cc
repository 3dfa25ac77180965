// cloudctl: the operator CLI of the live-migration control plane, a client of the scheduler API
// (gRPC). Commands follow the OpenStack client's conventions (`openstack server migrate
// --live-migration`, `openstack server migration list/show/abort/force complete`, novaclient's
// `host-evacuate-live`). See `cloudctl --help`.
//
// Size: the CLI's connection, output and every command's handler in one main; the commands (~550
// lines) could move to files by resource (migrations, hosts, instances, evacuations).
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cloudctl/args.h"
#include "cloudctl/config.h"
#include "cloudctl/format.h"
#include "common/migration_status.h"
#include "common/status_map.h"
#include "grpc/support/log.h"
#include "grpcpp/grpcpp.h"
#include "proto/scheduler.grpc.pb.h"
#include "scheduler/convert.h"

namespace livemig::cloudctl {
namespace {

// Exit codes beyond ExitCodeFor's (0..7): documented in the top-level help.
constexpr int kExitEndedBadly = 8;     // --wait: the migration/evacuation ended badly
constexpr int kExitInterrupted = 130;  // Ctrl-C while waiting (the migration goes on)

// After this long without any answer from the scheduler, --wait gives up (the migration goes on
// server-side; the message says how to follow it).
constexpr absl::Duration kWaitGiveUp = absl::Minutes(5);

// ---- the connection ------------------------------------------------------------------------

// The channel to the scheduler, and the one place that decides how cloudctl secures it: TLS
// verifying the server's certificate against the --ca file (and --server-name, else the host of
// --server) when a CA was given for a HOST:PORT server; otherwise plaintext (a unix: socket
// always; a HOST:PORT server without a CA, which the scheduler accepts on loopback only).
std::shared_ptr<grpc::Channel> OpenChannel(const Settings& s) {
  grpc::ChannelArguments args;
  args.SetUserAgentPrefix("cloudctl/0.1");
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (s.tls()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = s.ca_pem;
    creds = grpc::SslCredentials(ssl);
    if (!s.server_name.empty()) args.SetSslTargetNameOverride(s.server_name);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(s.server, creds, args);
}

class Client {
 public:
  explicit Client(const Settings& s)
      : settings_(s), stub_(sv1::SchedulerApi::NewStub(OpenChannel(s))) {}

  // A context with the per-call deadline and the token.
  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(settings_.timeout_s * 1000)));
    if (!settings_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + settings_.token);
  }

  // Runs one unary call: fn(stub, ctx) -> grpc::Status.
  template <typename Fn>
  grpc::Status Call(Fn fn) const {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    return fn(*stub_, &ctx);
  }

  sv1::SchedulerApi::Stub& stub() const { return *stub_; }
  const Settings& settings() const { return settings_; }

 private:
  Settings settings_;
  std::unique_ptr<sv1::SchedulerApi::Stub> stub_;
};

bool Contains(const std::string& text, const char* part) {
  return text.find(part) != std::string::npos;
}

// A connection that failed because of TLS: says what went wrong in words (gRPC's message names
// OpenSSL's reason) and what to do. false: not a TLS failure.
bool ReportTlsFailure(const Settings& s, const std::string& msg) {
  const std::string name = s.server_name.empty() ? HostOfTarget(s.server) : s.server_name;
  const std::string name_origin =
      s.server_name.empty() ? absl::StrCat("the host of ", s.server) : "--server-name";
  if (s.tls()) {
    if (Contains(msg, "CERTIFICATE_VERIFY_FAILED") || Contains(msg, "certificate verify failed") ||
        Contains(msg, "verify failed")) {
      std::cerr << "cloudctl: TLS: certificate verification failed: the scheduler's certificate at "
                << s.server << " could not be verified with the CA in " << s.ca_path << " (from "
                << s.ca_origin << ")\n"
                << "hint: give with --ca (or LIVEMIG_CA) the CA that issued the scheduler's API "
                   "certificate (deploy/pki.sh issue-server), and check that the certificate "
                   "has not expired\n";
      return true;
    }
    if (Contains(msg, "not in peer certificate") || Contains(msg, "Peer name")) {
      std::cerr << "cloudctl: TLS: the scheduler's certificate at " << s.server
                << " is not valid for the name '" << name << "' (" << name_origin << ")\n"
                << "hint: connect by a name or address in the certificate's SANs, give one of "
                   "them with --server-name, or reissue the certificate with deploy/pki.sh "
                   "issue-server DIR NAME DNS:... IP:...\n";
      return true;
    }
    if (Contains(msg, "Handshake failed") || Contains(msg, "handshake failed") ||
        Contains(msg, "SSL_ERROR") || Contains(msg, "WRONG_VERSION_NUMBER") ||
        Contains(msg, "Socket closed") || Contains(msg, "Connection reset") ||
        Contains(msg, "TSI_")) {
      std::cerr << "cloudctl: TLS: the TLS handshake with " << s.server
                << " failed: does the scheduler's API listener there speak TLS?\n"
                << "hint: cloudctl uses TLS because of " << s.ca_origin << " (" << s.ca_path
                << "); the scheduler needs its API certificate (deploy/pki.sh issue-server)\n";
      return true;
    }
    return false;
  }
  // Plaintext to a HOST:PORT server that closed the connection or answered with something that
  // is not HTTP/2: most likely a listener that speaks TLS.
  if (s.server.rfind("unix:", 0) != 0 &&
      (Contains(msg, "Socket closed") || Contains(msg, "Connection reset") ||
       Contains(msg, "Connection closed") || Contains(msg, "SETTINGS") ||
       Contains(msg, "http1.x") || Contains(msg, "End of TCP stream") || Contains(msg, "frame"))) {
    std::cerr << "hint: " << s.server << " closed the plaintext connection: if the scheduler's "
              << "API listener there speaks TLS, give its CA with --ca FILE (or LIVEMIG_CA, `ca = "
              << "...` in the config file); cloudctl uses TLS only with a CA\n";
    return true;
  }
  return false;
}

// Prints "cloudctl: <what>: <message>" and what to do, and returns the exit code.
int ReportError(const Settings& s, const std::string& what, const grpc::Status& st,
                const std::string& not_found_hint = "") {
  const absl::Status a = FromGrpcStatus(st, what);
  std::cerr << "cloudctl: " << a.message() << "\n";
  const std::string& msg = st.error_message();
  switch (a.code()) {
    case absl::StatusCode::kUnavailable:
      if (ReportTlsFailure(s, msg)) {
        break;
      } else if (msg.find("connect") != std::string::npos ||
                 msg.find("No such file") != std::string::npos ||
                 msg.find("Socket closed") != std::string::npos ||
                 msg.find("DNS resolution") != std::string::npos) {
        std::cerr << "hint: is the scheduler running? cloudctl tried " << s.server << " (from "
                  << s.server_origin << "); set --server or LIVEMIG_SERVER\n";
      } else {
        std::cerr << "hint: the scheduler or a service it needs is unavailable; retry later\n";
      }
      break;
    case absl::StatusCode::kDeadlineExceeded:
      std::cerr << "hint: no answer from " << s.server << " within " << s.timeout_s
                << " s: is the scheduler overloaded or hung? raise --timeout, or check --server / "
                   "LIVEMIG_SERVER\n";
      break;
    case absl::StatusCode::kUnauthenticated:
      if (msg.find("LIVEMIG_TOKEN") == std::string::npos) {
        std::cerr << "hint: give a valid token with --token or LIVEMIG_TOKEN\n";
      }
      break;
    case absl::StatusCode::kPermissionDenied:
      std::cerr << "hint: this command needs a token with the operator role\n";
      break;
    case absl::StatusCode::kNotFound:
      if (!not_found_hint.empty()) std::cerr << "hint: " << not_found_hint << "\n";
      break;
    case absl::StatusCode::kAborted:
      std::cerr << "hint: a concurrent change won or the object is busy; retry when it is done\n";
      break;
    default:
      break;
  }
  const int code = ExitCodeFor(a.code());
  return code == 0 ? 1 : code;
}

int ArgError(const std::string& message) {
  std::cerr << "cloudctl: " << message << "\n";
  return ExitCodeFor(absl::StatusCode::kInvalidArgument);
}

// ---- output --------------------------------------------------------------------------------

struct Output {
  bool json = false;
  // Where --wait draws its progress: stdout, or stderr with --json (stdout holds only JSON).
  std::ostream& progress() const { return json ? std::cerr : std::cout; }
  int progress_fd() const { return json ? STDERR_FILENO : STDOUT_FILENO; }
};

int TerminalColumns(int fd) {
  winsize w{};
  if (ioctl(fd, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  return 0;
}

// The one-line progress display of --wait. On a terminal the line is redrawn in place (\r);
// otherwise (a log, a pipe) one line is printed per change, at most one per second.
class ProgressView {
 public:
  ProgressView(std::ostream& out, int fd) : out_(out), fd_(fd), tty_(isatty(fd) != 0) {}

  void Show(const sv1::Migration& m) {
    std::string line = ProgressLine(m);
    if (line == shown_) return;
    if (tty_) {
      const int cols = TerminalColumns(fd_);
      std::string drawn = line;
      if (cols > 1 && drawn.size() >= static_cast<size_t>(cols)) drawn.resize(cols - 1);
      out_ << "\r" << drawn << "\x1b[K" << std::flush;
      shown_ = line;
      drawn_ = true;
      return;
    }
    const absl::Time now = absl::Now();
    if (now - last_print_ < absl::Seconds(1)) {
      pending_ = line;
      return;
    }
    Print(line, now);
  }

  // A message on its own line (ends the in-place line first).
  void Note(const std::string& text) {
    EndLine();
    out_ << text << "\n" << std::flush;
  }

  // Prints the latest state if the rate limit held it back, and ends the in-place line.
  void Finish() {
    if (!tty_ && !pending_.empty() && pending_ != shown_) Print(pending_, absl::Now());
    EndLine();
  }

 private:
  void Print(const std::string& line, absl::Time now) {
    out_ << line << "\n" << std::flush;
    shown_ = line;
    pending_.clear();
    last_print_ = now;
  }
  void EndLine() {
    if (tty_ && drawn_) out_ << "\n" << std::flush;
    drawn_ = false;
    shown_.clear();
  }

  std::ostream& out_;
  int fd_;
  bool tty_;
  bool drawn_ = false;
  std::string shown_, pending_;
  absl::Time last_print_ = absl::InfinitePast();
};

// Ctrl-C while waiting: say that the migration goes on and how to follow or stop it.
char g_interrupt_message[512] = "\ncloudctl: interrupted\n";

extern "C" void OnInterrupt(int) {
  const ssize_t n = write(STDERR_FILENO, g_interrupt_message, strlen(g_interrupt_message));
  (void)n;
  _exit(kExitInterrupted);
}

void InstallInterruptHint(const std::string& message) {
  snprintf(g_interrupt_message, sizeof(g_interrupt_message), "\n%s\n", message.c_str());
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool Retryable(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::DEADLINE_EXCEEDED ||
         c == grpc::StatusCode::ABORTED || c == grpc::StatusCode::INTERNAL ||
         c == grpc::StatusCode::UNKNOWN || c == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         c == grpc::StatusCode::CANCELLED;
}

// Follows a migration until it is completed, failed or cancelled, or reaches error: the
// WatchMigration stream (re-opened after each per-call deadline), falling back to polling
// GetMigration every second when the stream breaks. Returns the last snapshot, or the error
// that made waiting impossible.
grpc::Status WaitForMigration(const Client& client, const std::string& id, ProgressView* view,
                              sv1::Migration* out) {
  bool stream = true;
  std::optional<absl::Time> failing_since;
  bool announced_outage = false;
  while (true) {
    if (stream) {
      grpc::ClientContext ctx;
      client.Prepare(&ctx);
      sv1::WatchMigrationRequest req;
      req.set_migration_id(id);
      req.set_min_interval_ms(500);
      auto reader = client.stub().WatchMigration(&ctx, req);
      sv1::Migration m;
      bool got = false;
      while (reader->Read(&m)) {
        got = true;
        *out = m;
        view->Show(m);
        if (EndsWait(m.status())) {
          ctx.TryCancel();  // a scheduler before 'error' ended the stream kept it open
          (void)reader->Finish();
          return grpc::Status::OK;
        }
      }
      const grpc::Status st = reader->Finish();
      if (got && st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) continue;  // re-watch
      if (!st.ok() && !Retryable(st.error_code())) return st;
      view->Note(absl::StrCat("(the watch stream ended",
                              st.ok() ? "" : absl::StrCat(": ", st.error_message()),
                              "; polling the migration every second)"));
      stream = false;
      continue;
    }
    sv1::GetMigrationRequest req;
    req.set_migration_id(id);
    sv1::Migration m;
    const grpc::Status st =
        client.Call([&](auto& stub, auto* ctx) { return stub.GetMigration(ctx, req, &m); });
    if (st.ok()) {
      if (announced_outage) view->Note("(the scheduler answers again)");
      failing_since.reset();
      announced_outage = false;
      *out = m;
      view->Show(m);
      if (EndsWait(m.status())) return grpc::Status::OK;
    } else {
      if (!Retryable(st.error_code())) return st;
      const absl::Time now = absl::Now();
      if (!failing_since) failing_since = now;
      if (!announced_outage) {
        view->Note(absl::StrCat("(cannot reach the scheduler: ", st.error_message(),
                                "; retrying every second)"));
        announced_outage = true;
      }
      if (now - *failing_since > kWaitGiveUp) {
        return grpc::Status(
            st.error_code(),
            absl::StrCat("no answer from the scheduler for ", HumanDuration(now - *failing_since),
                         " while waiting (last error: ", st.error_message(), ")"));
      }
    }
    absl::SleepFor(absl::Seconds(1));
  }
}

// ---- commands ------------------------------------------------------------------------------

v1::BlockMigration BlockMigrationFrom(const std::string& s) {
  if (s == "yes") return v1::BLOCK_MIGRATION_YES;
  if (s == "no") return v1::BLOCK_MIGRATION_NO;
  return v1::BLOCK_MIGRATION_AUTO;
}

v1::MigrationOptions OptionsFrom(const MigrateArgs& a) {
  v1::MigrationOptions o;
  o.set_mode(a.offline ? v1::MIGRATION_MODE_OFFLINE : v1::MIGRATION_MODE_LIVE);
  o.set_block_migration(BlockMigrationFrom(a.block));
  if (a.has_completion_timeout) o.set_completion_timeout_s(a.completion_timeout);
  if (a.has_completion_action) {
    o.set_completion_action(a.completion_action == "force-complete"
                                ? v1::COMPLETION_ACTION_FORCE_COMPLETE
                                : v1::COMPLETION_ACTION_ABORT);
  }
  if (a.has_max_downtime) o.set_max_downtime_ms(a.max_downtime);
  if (a.has_bandwidth) o.set_bandwidth_mib_s(a.bandwidth);
  o.set_allow_post_copy(a.allow_post_copy);
  return o;
}

std::string MigrationWhat(const MigrateArgs& a) {
  return absl::StrCat("live-migration of ", a.uuid, a.dest.empty() ? "" : " to ", a.dest);
}

// Follows migration `m` to its end with a progress view; prints the summary; returns the exit
// code.
int WaitAndSummarize(const Client& client, const Output& o, const sv1::Migration& accepted) {
  const std::string n = absl::StrCat(accepted.number());
  InstallInterruptHint(absl::StrCat("cloudctl: stopped waiting; migration ", n,
                                    " goes on. Follow it: cloudctl migration-show ", n,
                                    "; stop it: cloudctl migration-abort ", n));
  ProgressView view(o.progress(), o.progress_fd());
  sv1::Migration last = accepted;
  view.Show(accepted);
  const grpc::Status st = WaitForMigration(client, accepted.id(), &view, &last);
  view.Finish();
  if (!st.ok()) {
    const int code = ReportError(client.settings(), absl::StrCat("waiting for migration ", n), st);
    std::cerr << "hint: the migration goes on without cloudctl; follow it with cloudctl "
                 "migration-show "
              << n << "\n";
    return code;
  }
  if (o.json) {
    std::cout << ToJson(last);
  } else {
    std::cout << SummaryLine(last) << "\n";
  }
  if (last.status() == v1::MIGRATION_STATUS_COMPLETED) return 0;
  std::cerr << "cloudctl: migration " << n << " " << StatusName(last.status()) << ": "
            << OrDash(last.failure_reason()) << "\n"
            << "hint: cloudctl migration-show " << n << " shows every step\n";
  return kExitEndedBadly;
}

// --dry-run: CheckMigration, which a reader token may call (LiveMigrate with dry_run would need
// an operator token for the same answer).
int DryRun(const Client& client, const Output& o, const MigrateArgs& a) {
  sv1::CheckMigrationRequest req;
  req.set_instance_uuid(a.uuid);
  req.set_destination(a.dest);
  *req.mutable_options() = OptionsFrom(a);
  sv1::CheckMigrationResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.CheckMigration(ctx, req, &resp); });
  if (!st.ok()) {
    return ReportError(client.settings(), "dry run of the " + MigrationWhat(a), st,
                       "cloudctl instance-list and cloudctl host-list show what the scheduler "
                       "knows");
  }
  std::cout << (o.json ? ToJson(resp) : RenderCheck(resp));
  if (resp.passed()) return 0;
  if (!o.json) std::cerr << "cloudctl: dry run: the migration would not pass its checks\n";
  return ExitCodeFor(absl::StatusCode::kFailedPrecondition);
}

int LiveMigration(const Client& client, const Output& o, const MigrateArgs& a) {
  if (a.dry_run) return DryRun(client, o, a);
  sv1::LiveMigrateRequest req;
  req.set_instance_uuid(a.uuid);
  req.set_destination(a.dest);
  *req.mutable_options() = OptionsFrom(a);
  req.set_request_id(a.request_id);
  req.set_requester(client.settings().requester);
  sv1::LiveMigrateResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.LiveMigrate(ctx, req, &resp); });
  if (!st.ok()) {
    return ReportError(client.settings(), MigrationWhat(a), st,
                       "cloudctl instance-list and cloudctl host-list show what the scheduler "
                       "knows");
  }
  const sv1::Migration& m = resp.migration();
  if (!a.wait) {
    if (o.json) {
      std::cout << ToJson(resp);
      return 0;
    }
    FieldTable f;
    f.Add("id", m.id());
    f.Add("number", absl::StrCat(m.number()));
    f.Add("status", StatusName(m.status()));
    f.Add("instance", m.instance_uuid());
    f.Add("source host", m.source_host());
    f.Add("destination host", m.dest_host().empty() ? "(scheduler's choice)" : m.dest_host());
    f.Add("options", OptionsSummary(m.options()));
    f.Add("requester", OrDash(m.requester()));
    f.Add("request id", OrDash(m.request_id()));
    if (resp.existing()) std::cout << "Request id " << a.request_id << " was already used: ";
    std::cout << (resp.existing() ? "its migration:\n" : "Live migration accepted:\n") << f.Render()
              << "Follow it: cloudctl migration-show " << m.number()
              << "   (or wait for it: cloudctl live-migration ... --wait)\n";
    return 0;
  }
  o.progress() << "Migration " << m.number() << " (" << m.id() << ") "
               << (resp.existing() ? "already requested" : "accepted") << ": " << m.instance_uuid()
               << " from " << m.source_host() << " to "
               << (m.dest_host().empty() ? "the scheduler's choice" : m.dest_host()) << "\n"
               << std::flush;
  return WaitAndSummarize(client, o, m);
}

int MigrationList(const Client& client, const Output& o, const std::vector<std::string>& statuses,
                  const std::string& host, const std::string& instance, uint32_t limit,
                  const std::string& marker) {
  sv1::ListMigrationsRequest req;
  for (const auto& s : statuses) {
    auto parsed = ParseMigrationStatus(s);
    if (!parsed) {
      return ArgError(absl::StrCat("--status '", s, "' is not a migration status"));
    }
    req.add_statuses(sched::ToProtoStatus(*parsed));
  }
  req.set_host(host);
  req.set_instance_uuid(instance);
  req.set_page_size(limit);
  req.set_page_token(marker);
  sv1::ListMigrationsResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.ListMigrations(ctx, req, &resp); });
  if (!st.ok()) return ReportError(client.settings(), "migration-list", st);
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  std::cout << (resp.migrations_size() == 0 ? "No migrations match.\n" : RenderMigrationList(resp));
  if (!resp.next_page_token().empty()) {
    std::cout << "More migrations: repeat with the same filters and --marker "
              << resp.next_page_token() << "\n";
  }
  return 0;
}

int MigrationShow(const Client& client, const Output& o, const std::string& id) {
  sv1::GetMigrationRequest req;
  req.set_migration_id(id);
  sv1::Migration m;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.GetMigration(ctx, req, &m); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("migration-show ", id), st,
                       "cloudctl migration-list shows the migrations");
  }
  std::cout << (o.json ? ToJson(m) : RenderMigration(m));
  return 0;
}

int MigrationAbort(const Client& client, const Output& o, const std::string& id,
                   const std::string& reason) {
  sv1::AbortMigrationRequest req;
  req.set_migration_id(id);
  req.set_reason(reason);
  req.set_requester(client.settings().requester);
  sv1::AbortMigrationResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.AbortMigration(ctx, req, &resp); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("migration-abort ", id), st,
                       "cloudctl migration-list shows the migrations");
  }
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  const auto& m = resp.migration();
  std::cout << "Abort of migration " << m.number() << " recorded (status now "
            << StatusName(m.status()) << "); it rolls back to " << m.source_host()
            << " and ends cancelled.\nFollow it: cloudctl migration-show " << m.number() << "\n";
  return 0;
}

int MigrationResolve(const Client& client, const Output& o, const std::string& id,
                     const std::string& running_on, const std::string& reason) {
  sv1::ResolveMigrationRequest req;
  req.set_migration_id(id);
  req.set_running_on(running_on);
  req.set_reason(reason);
  req.set_requester(client.settings().requester);
  sv1::ResolveMigrationResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.ResolveMigration(ctx, req, &resp); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("migration-resolve ", id), st,
                       "cloudctl migration-show shows the migration and its timeline");
  }
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  const auto& m = resp.migration();
  std::cout << "Migration " << m.number() << " resolved: " << StatusName(m.status())
            << ", the instance runs on " << running_on
            << ".\nIts timeline: cloudctl migration-show " << m.number() << "\n";
  return 0;
}

int MigrationForceComplete(const Client& client, const Output& o, const std::string& id) {
  sv1::ForceCompleteMigrationRequest req;
  req.set_migration_id(id);
  req.set_requester(client.settings().requester);
  sv1::ForceCompleteMigrationResponse resp;
  const grpc::Status st = client.Call(
      [&](auto& stub, auto* ctx) { return stub.ForceCompleteMigration(ctx, req, &resp); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("migration-force-complete ", id), st,
                       "cloudctl migration-list shows the migrations");
  }
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  const auto& m = resp.migration();
  std::cout << "Force-complete of migration " << m.number() << " requested"
            << (m.options().allow_post_copy() ? " (post-copy allowed: it may switch to post-copy)"
                                              : " (the guest pauses until the copy completes)")
            << ".\nFollow it: cloudctl migration-show " << m.number() << "\n";
  return 0;
}

int HostList(const Client& client, const Output& o, const std::string& status,
             const std::string& state, uint32_t limit, const std::string& marker) {
  sv1::ListHostsRequest req;
  if (!status.empty()) req.set_enabled(status == "enabled");
  if (!state.empty()) req.set_up(state == "up");
  req.set_page_size(limit);
  req.set_page_token(marker);
  sv1::ListHostsResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.ListHosts(ctx, req, &resp); });
  if (!st.ok()) return ReportError(client.settings(), "host-list", st);
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  std::cout << (resp.hosts_size() == 0 ? "No hosts match (no agent has reported yet?).\n"
                                       : RenderHostList(resp));
  if (!resp.next_page_token().empty()) {
    std::cout << "More hosts: repeat with --marker " << resp.next_page_token() << "\n";
  }
  return 0;
}

constexpr char kHostNotFound[] = "cloudctl host-list shows the hosts that have reported";

int HostShow(const Client& client, const Output& o, const std::string& host) {
  sv1::GetHostRequest req;
  req.set_hostname(host);
  sv1::Host h;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.GetHost(ctx, req, &h); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("host-show ", host), st, kHostNotFound);
  }
  std::cout << (o.json ? ToJson(h) : RenderHost(h));
  return 0;
}

int HostSetEnabled(const Client& client, const Output& o, const std::string& host, bool enabled,
                   const std::string& reason) {
  sv1::SetHostEnabledRequest req;
  req.set_hostname(host);
  req.set_enabled(enabled);
  req.set_reason(reason);
  req.set_requester(client.settings().requester);
  sv1::Host h;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.SetHostEnabled(ctx, req, &h); });
  if (!st.ok()) {
    return ReportError(client.settings(),
                       absl::StrCat(enabled ? "host-enable " : "host-disable ", host), st,
                       kHostNotFound);
  }
  if (o.json) {
    std::cout << ToJson(h);
    return 0;
  }
  if (enabled) {
    std::cout << "Host " << host << " enabled: it accepts new migrations and instances again.\n";
  } else {
    std::cout << "Host " << host << " disabled (reason: " << h.disabled_reason() << ", by "
              << OrDash(h.disabled_by())
              << "): no new migrations to it; migrations in flight go on.\n"
                 "To move its instances away: cloudctl host-evacuate-live "
              << host << " --wait\n";
  }
  return 0;
}

grpc::Status GetEvacuation(const Client& client, const std::string& id, sv1::Evacuation* e) {
  sv1::GetEvacuationRequest req;
  req.set_evacuation_id(id);
  return client.Call([&](auto& stub, auto* ctx) { return stub.GetEvacuation(ctx, req, e); });
}

// Polls an evacuation until it is no longer running, printing each instance's outcome as it
// changes. Returns the exit code.
int WaitForEvacuation(const Client& client, const Output& o, sv1::Evacuation e) {
  InstallInterruptHint(absl::StrCat("cloudctl: stopped waiting; evacuation ", e.id(),
                                    " goes on. Follow it: cloudctl evacuation-show ", e.id()));
  std::ostream& out = o.progress();
  std::map<std::string, std::string> seen;  // instance -> last printed line
  std::optional<absl::Time> failing_since;
  while (true) {
    for (const auto& it : e.items()) {
      std::string line =
          absl::StrCat("  ", it.instance_name().empty() ? it.instance_uuid() : it.instance_name(),
                       ": ", EvacuationItemOutcomeName(it.outcome()));
      if (!it.migration_id().empty())
        absl::StrAppend(&line, " (migration ", it.migration_id(), ")");
      if (!it.dest_host().empty()) absl::StrAppend(&line, " -> ", it.dest_host());
      if (!it.reason().empty()) absl::StrAppend(&line, ": ", it.reason());
      if (seen[it.instance_uuid()] != line) {
        out << line << "\n" << std::flush;
        seen[it.instance_uuid()] = line;
      }
    }
    if (e.status() != sv1::EVACUATION_STATUS_RUNNING &&
        e.status() != sv1::EVACUATION_STATUS_CANCELLING) {
      break;
    }
    absl::SleepFor(absl::Seconds(1));
    sv1::Evacuation next;
    const grpc::Status st = GetEvacuation(client, e.id(), &next);
    if (st.ok()) {
      failing_since.reset();
      e = next;
      continue;
    }
    if (!Retryable(st.error_code())) {
      return ReportError(client.settings(), absl::StrCat("waiting for evacuation ", e.id()), st);
    }
    if (!failing_since) failing_since = absl::Now();
    if (absl::Now() - *failing_since > kWaitGiveUp) {
      return ReportError(client.settings(), absl::StrCat("waiting for evacuation ", e.id()), st);
    }
  }
  if (o.json) {
    std::cout << ToJson(e);
  } else {
    std::cout << "Evacuation " << e.id() << " of " << e.host() << " "
              << EvacuationStatusName(e.status()) << ": " << e.succeeded() << " succeeded, "
              << e.failed() << " failed, " << e.skipped() << " skipped, " << e.cancelled()
              << " cancelled (of " << e.total() << ").\n";
  }
  if (e.status() == sv1::EVACUATION_STATUS_COMPLETED) return 0;
  std::cerr << "cloudctl: evacuation " << e.id() << " of " << e.host() << " "
            << EvacuationStatusName(e.status())
            << (e.failure_reason().empty() ? "" : ": " + e.failure_reason())
            << (e.cancel_reason().empty() ? "" : " (" + e.cancel_reason() + ")") << "\n"
            << "hint: cloudctl evacuation-show " << e.id() << " lists every instance's outcome\n";
  return kExitEndedBadly;
}

int HostEvacuateLive(const Client& client, const Output& o, const EvacuateArgs& a) {
  sv1::EvacuateHostRequest req;
  req.set_hostname(a.host);
  req.set_max_parallel(a.max_parallel);
  req.set_destination(a.target);
  req.mutable_options()->set_mode(v1::MIGRATION_MODE_LIVE);
  req.mutable_options()->set_block_migration(BlockMigrationFrom(a.block));
  req.set_request_id(a.request_id);
  req.set_requester(client.settings().requester);
  sv1::Evacuation e;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.EvacuateHost(ctx, req, &e); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("host-evacuate-live ", a.host), st,
                       kHostNotFound);
  }
  if (!a.wait) {
    if (o.json) {
      std::cout << ToJson(e);
    } else {
      std::cout << "Evacuation " << e.id() << " of " << e.host() << " started: " << e.total()
                << " instance(s), at most " << e.max_parallel()
                << " at once.\nFollow it: cloudctl evacuation-show " << e.id() << "\n";
    }
    return 0;
  }
  o.progress() << "Evacuation " << e.id() << " of " << e.host() << " started: " << e.total()
               << " instance(s), at most " << e.max_parallel() << " at once.\n"
               << std::flush;
  return WaitForEvacuation(client, o, e);
}

int EvacuationList(const Client& client, const Output& o, const std::string& host, uint32_t limit,
                   const std::string& marker) {
  sv1::ListEvacuationsRequest req;
  req.set_host(host);
  req.set_page_size(limit);
  req.set_page_token(marker);
  sv1::ListEvacuationsResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.ListEvacuations(ctx, req, &resp); });
  if (!st.ok()) return ReportError(client.settings(), "evacuation-list", st);
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  std::cout << (resp.evacuations_size() == 0 ? "No evacuations match.\n"
                                             : RenderEvacuationList(resp));
  if (!resp.next_page_token().empty()) {
    std::cout << "More evacuations: repeat with the same filters and --marker "
              << resp.next_page_token() << "\n";
  }
  return 0;
}

int EvacuationShow(const Client& client, const Output& o, const std::string& id) {
  sv1::Evacuation e;
  const grpc::Status st = GetEvacuation(client, id, &e);
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("evacuation-show ", id), st,
                       "cloudctl evacuation-list shows the evacuations");
  }
  std::cout << (o.json ? ToJson(e) : RenderEvacuation(e));
  return 0;
}

int EvacuationCancel(const Client& client, const Output& o, const std::string& id,
                     const std::string& reason) {
  sv1::CancelEvacuationRequest req;
  req.set_evacuation_id(id);
  req.set_reason(reason);
  req.set_requester(client.settings().requester);
  sv1::Evacuation e;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.CancelEvacuation(ctx, req, &e); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("evacuation-cancel ", id), st,
                       "cloudctl evacuation-list shows the evacuations");
  }
  if (o.json) {
    std::cout << ToJson(e);
    return 0;
  }
  std::cout << "Evacuation " << e.id() << " of " << e.host() << " "
            << EvacuationStatusName(e.status()) << " (by " << OrDash(e.cancelled_by())
            << (e.cancel_reason().empty() ? "" : ": " + e.cancel_reason()) << "): " << e.cancelled()
            << " instance(s) not started stay on " << e.host();
  if (e.status() == sv1::EVACUATION_STATUS_CANCELLING) {
    std::cout << "; " << e.in_progress()
              << " migration(s) in flight finish first.\nFollow it: cloudctl evacuation-show "
              << e.id() << "\n";
  } else {
    std::cout << ".\n";
  }
  return 0;
}

int InstanceList(const Client& client, const Output& o, const std::string& host, uint32_t limit,
                 const std::string& marker) {
  sv1::ListInstancesRequest req;
  req.set_host(host);
  req.set_page_size(limit);
  req.set_page_token(marker);
  sv1::ListInstancesResponse resp;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.ListInstances(ctx, req, &resp); });
  if (!st.ok()) return ReportError(client.settings(), "instance-list", st);
  if (o.json) {
    std::cout << ToJson(resp);
    return 0;
  }
  std::cout << (resp.instances_size() == 0 ? "No instances match.\n" : RenderInstanceList(resp));
  if (!resp.next_page_token().empty()) {
    std::cout << "More instances: repeat with the same filters and --marker "
              << resp.next_page_token() << "\n";
  }
  return 0;
}

int InstanceShow(const Client& client, const Output& o, const std::string& uuid) {
  sv1::GetInstanceRequest req;
  req.set_instance_uuid(uuid);
  sv1::Instance i;
  const grpc::Status st =
      client.Call([&](auto& stub, auto* ctx) { return stub.GetInstance(ctx, req, &i); });
  if (!st.ok()) {
    return ReportError(client.settings(), absl::StrCat("instance-show ", uuid), st,
                       "cloudctl instance-list shows the instances the agents report");
  }
  std::cout << (o.json ? ToJson(i) : RenderInstance(i));
  return 0;
}

}  // namespace
}  // namespace livemig::cloudctl

int main(int argc, char** argv) {
  using namespace livemig::cloudctl;  // NOLINT: main only
  ParseResult parsed = ParseCommandLine(std::vector<std::string>(argv, argv + argc));
  if (!parsed.run) {
    std::cout << parsed.out << std::flush;
    std::cerr << parsed.err << std::flush;
    return parsed.exit_code;
  }
  const Command& c = parsed.command;
  // cloudctl reports every failure itself; gRPC's own log lines would only repeat them
  // (GRPC_VERBOSITY=debug brings them back for troubleshooting).
  if (std::getenv("GRPC_VERBOSITY") == nullptr) gpr_set_log_function([](gpr_log_func_args*) {});
  auto settings = ResolveSettings(c.flags, [](const char* name) { return std::getenv(name); });
  if (!settings.ok()) return ArgError(std::string(settings.status().message()));
  const Client client(*settings);
  Output out;
  out.json = c.json;
  const std::string& cmd = c.command;
  if (cmd == "live-migration") return LiveMigration(client, out, c.migrate);
  if (cmd == "migration-list") {
    return MigrationList(client, out, c.statuses, c.host, c.instance, c.limit, c.marker);
  }
  if (cmd == "migration-show") return MigrationShow(client, out, c.id);
  if (cmd == "migration-abort") return MigrationAbort(client, out, c.id, c.reason);
  if (cmd == "migration-force-complete") return MigrationForceComplete(client, out, c.id);
  if (cmd == "migration-resolve") {
    return MigrationResolve(client, out, c.id, c.running_on, c.reason);
  }
  if (cmd == "host-list") {
    return HostList(client, out, c.status_filter, c.state_filter, c.limit, c.marker);
  }
  if (cmd == "host-show") return HostShow(client, out, c.host);
  if (cmd == "host-disable") return HostSetEnabled(client, out, c.host, false, c.reason);
  if (cmd == "host-enable") return HostSetEnabled(client, out, c.host, true, "");
  if (cmd == "host-evacuate-live") return HostEvacuateLive(client, out, c.evacuate);
  if (cmd == "evacuation-list") return EvacuationList(client, out, c.host, c.limit, c.marker);
  if (cmd == "evacuation-show") return EvacuationShow(client, out, c.id);
  if (cmd == "evacuation-cancel") return EvacuationCancel(client, out, c.id, c.reason);
  if (cmd == "instance-list") return InstanceList(client, out, c.host, c.limit, c.marker);
  if (cmd == "instance-show") return InstanceShow(client, out, c.instance);
  return ArgError("unknown command " + cmd + "; see cloudctl --help");
}
