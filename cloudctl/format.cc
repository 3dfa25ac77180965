// Size: every human-readable view of cloudctl: tables, names, values, progress, and one
// renderer per object (~340 lines) that could be a file of its own.
#include "cloudctl/format.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/migration_status.h"
#include "scheduler/api_names.h"
#include "scheduler/convert.h"

namespace livemig::cloudctl {
namespace {

// Splits `text` into lines of at most `width` characters, at spaces where possible.
std::string Wrap(const std::string& text, size_t width) {
  std::string out;
  for (absl::string_view para : absl::StrSplit(text, '\n')) {
    std::string line;
    for (absl::string_view word : absl::StrSplit(para, ' ', absl::SkipEmpty())) {
      while (word.size() > width) {  // a very long word (a path): cut it
        if (!line.empty()) {
          absl::StrAppend(&out, out.empty() ? "" : "\n", line);
          line.clear();
        }
        absl::StrAppend(&out, out.empty() ? "" : "\n", word.substr(0, width));
        word.remove_prefix(width);
      }
      if (!line.empty() && line.size() + 1 + word.size() > width) {
        absl::StrAppend(&out, out.empty() ? "" : "\n", line);
        line.clear();
      }
      absl::StrAppend(&line, line.empty() ? "" : " ", word);
    }
    absl::StrAppend(&out, out.empty() ? "" : "\n", line);
  }
  return out;
}

std::string HypervisorVersion(uint64_t v) {
  if (v == 0) return "";
  return absl::StrCat(v / 1000000, ".", (v / 1000) % 1000, ".", v % 1000);
}

std::string Name(const sv1::Migration& m) {
  return m.instance_name().empty() ? m.instance_uuid() : m.instance_name();
}

absl::Duration Between(const google::protobuf::Timestamp& a, const google::protobuf::Timestamp& b) {
  return sched::FromProtoTime(b) - sched::FromProtoTime(a);
}

bool IsSet(const google::protobuf::Timestamp& t) { return t.seconds() != 0 || t.nanos() != 0; }

// The migration's age at its end (or at its last change while it is not finished).
absl::Duration MigrationDuration(const sv1::Migration& m) {
  if (!IsSet(m.created_at())) return absl::ZeroDuration();
  const auto& end = IsSet(m.finished_at()) ? m.finished_at() : m.updated_at();
  return std::max(absl::ZeroDuration(), Between(m.created_at(), end));
}

std::string CheckResultText(const v1::CheckResult& c) {
  if (c.skipped()) return "skipped";
  return c.passed() ? "pass" : "FAIL";
}

std::string DestText(const sv1::Migration& m) {
  if (m.dest_host().empty()) return "(not chosen yet)";
  return absl::StrCat(m.dest_host(), m.dest_requested() ? " (requested)" : " (scheduler's choice)");
}

}  // namespace

// ---- tables --------------------------------------------------------------------------------

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

std::string Table::Render() const {
  const size_t n = headers_.size();
  std::vector<size_t> width(n, 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < n; ++i) {
      for (absl::string_view line : absl::StrSplit(row[i], '\n')) {
        width[i] = std::max(width[i], line.size());
      }
    }
  };
  measure(headers_);
  for (const auto& r : rows_) measure(r);
  std::string rule = "+";
  for (size_t w : width) absl::StrAppend(&rule, std::string(w + 2, '-'), "+");
  rule += "\n";
  auto emit = [&](const std::vector<std::string>& row, std::string* out) {
    std::vector<std::vector<std::string>> lines(n);
    size_t height = 1;
    for (size_t i = 0; i < n; ++i) {
      lines[i] = absl::StrSplit(row[i], '\n');
      height = std::max(height, lines[i].size());
    }
    for (size_t l = 0; l < height; ++l) {
      *out += "|";
      for (size_t i = 0; i < n; ++i) {
        const std::string cell = l < lines[i].size() ? lines[i][l] : "";
        absl::StrAppend(out, " ", cell, std::string(width[i] - cell.size(), ' '), " |");
      }
      *out += "\n";
    }
  };
  std::string out = rule;
  emit(headers_, &out);
  out += rule;
  for (const auto& r : rows_) emit(r, &out);
  if (!rows_.empty()) out += rule;
  return out;
}

void FieldTable::Add(const std::string& field, const std::string& value) {
  table_.AddRow({field, value});
}

std::string FieldTable::Render() const { return table_.Render(); }

// ---- names ---------------------------------------------------------------------------------

std::string StatusName(v1::MigrationStatus s) {
  auto st = sched::FromProtoStatus(s);
  if (!st.ok()) return absl::StrCat("unknown(", static_cast<int>(s), ")");
  return ToString(*st);
}

bool IsTerminalStatus(v1::MigrationStatus s) {
  auto st = sched::FromProtoStatus(s);
  return st.ok() && IsTerminal(*st);
}

bool EndsWait(v1::MigrationStatus s) {
  return IsTerminalStatus(s) || s == v1::MIGRATION_STATUS_ERROR;
}

std::string PhaseName(v1::MigrationPhase p) {
  switch (p) {
    case v1::MIGRATION_PHASE_PRE_COPY:
      return "pre-copy";
    case v1::MIGRATION_PHASE_POST_COPY:
      return "post-copy";
    case v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE:
      return "paused-to-complete";
    case v1::MIGRATION_PHASE_OFFLINE_COPY:
      return "offline-copy";
    default:
      return "";
  }
}

std::string OutcomeName(sv1::StepOutcome o) {
  switch (o) {
    case sv1::STEP_OUTCOME_STARTED:
      return "started";
    case sv1::STEP_OUTCOME_SUCCEEDED:
      return "succeeded";
    case sv1::STEP_OUTCOME_FAILED:
      return "FAILED";
    case sv1::STEP_OUTCOME_NOTE:
      return "note";
    case sv1::STEP_OUTCOME_SKIPPED:
      return "skipped";
    default:
      return "-";
  }
}

std::string EvacuationStatusName(sv1::EvacuationStatus s) {
  switch (s) {
    case sv1::EVACUATION_STATUS_RUNNING:
      return "running";
    case sv1::EVACUATION_STATUS_COMPLETED:
      return "completed";
    case sv1::EVACUATION_STATUS_COMPLETED_WITH_ERRORS:
      return "completed with errors";
    case sv1::EVACUATION_STATUS_FAILED:
      return "failed";
    case sv1::EVACUATION_STATUS_CANCELLING:
      return "cancelling";
    case sv1::EVACUATION_STATUS_CANCELLED:
      return "cancelled";
    default:
      return absl::StrCat("unknown(", static_cast<int>(s), ")");
  }
}

std::string EvacuationItemOutcomeName(sv1::EvacuationItemOutcome o) {
  switch (o) {
    case sv1::EVACUATION_ITEM_OUTCOME_PENDING:
      return "pending";
    case sv1::EVACUATION_ITEM_OUTCOME_MIGRATING:
      return "migrating";
    case sv1::EVACUATION_ITEM_OUTCOME_SUCCEEDED:
      return "succeeded";
    case sv1::EVACUATION_ITEM_OUTCOME_FAILED:
      return "failed";
    case sv1::EVACUATION_ITEM_OUTCOME_SKIPPED:
      return "skipped";
    case sv1::EVACUATION_ITEM_OUTCOME_CANCELLED:
      return "cancelled";
    default:
      return absl::StrCat("unknown(", static_cast<int>(o), ")");
  }
}

std::string OptionsSummary(const v1::MigrationOptions& o) {
  std::vector<std::string> parts;
  parts.push_back(o.mode() == v1::MIGRATION_MODE_OFFLINE ? "offline" : "live");
  parts.push_back(
      absl::StrCat("block migration ", o.block_migration() == v1::BLOCK_MIGRATION_YES  ? "yes"
                                       : o.block_migration() == v1::BLOCK_MIGRATION_NO ? "no"
                                                                                       : "auto"));
  if (o.has_completion_timeout_s()) {
    if (o.completion_timeout_s() == 0) {
      parts.push_back("no completion timeout");
    } else {
      parts.push_back(absl::StrCat("completion timeout ", o.completion_timeout_s(), " s (",
                                   o.completion_action() == v1::COMPLETION_ACTION_FORCE_COMPLETE
                                       ? "force-complete"
                                       : "abort",
                                   ")"));
    }
  }
  if (o.has_max_downtime_ms())
    parts.push_back(absl::StrCat("max downtime ", o.max_downtime_ms(), " ms"));
  if (o.has_bandwidth_mib_s()) {
    parts.push_back(o.bandwidth_mib_s() == 0
                        ? "bandwidth unlimited"
                        : absl::StrCat("bandwidth ", o.bandwidth_mib_s(), " MiB/s"));
  }
  if (o.allow_post_copy()) parts.push_back("post-copy allowed");
  return absl::StrJoin(parts, ", ");
}

// ---- values --------------------------------------------------------------------------------

std::string FormatTime(const google::protobuf::Timestamp& t, bool millis) {
  if (!IsSet(t)) return "-";
  return absl::FormatTime(millis ? "%Y-%m-%dT%H:%M:%E3SZ" : "%Y-%m-%dT%H:%M:%SZ",
                          sched::FromProtoTime(t), absl::UTCTimeZone());
}

std::string HumanDuration(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  if (ms < 1000) return absl::StrCat(ms, " ms");
  if (ms < 60000) return absl::StrFormat("%.1f s", ms / 1000.0);
  const int64_t s = ms / 1000;
  if (s < 3600) return absl::StrFormat("%d min %02d s", s / 60, s % 60);
  return absl::StrFormat("%d h %02d min", s / 3600, (s / 60) % 60);
}

std::string MiB(uint64_t bytes) {
  return absl::StrFormat("%.1f", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

std::string SizeMiB(int64_t mib) {
  if (std::llabs(mib) < 10240) return absl::StrCat(mib, " MiB");
  return absl::StrFormat("%.1f GiB", mib / 1024.0);
}

std::string YesNo(bool b) { return b ? "yes" : "no"; }

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// ---- progress ------------------------------------------------------------------------------

namespace {

// The transfer part of the progress, with the figures Nova shows, each named: processed (sent so
// far, re-sent dirty pages included, so it can exceed the total), remaining and total.
//   bar:  "pre-copy [###.....]  46.3%  remaining 34.7 of 64.6 MiB, sent 573.3 MiB  12.0 MiB/s ..."
//   text: "pre-copy, 46.3% (remaining 34.7 of 64.6 MiB, sent 573.3 MiB), elapsed 2.0 s, pass 3"
// Before the hypervisor's first byte counts: "waiting for the first byte counts". "" before the
// transfer.
std::string TransferText(const v1::MigrationProgress& p, bool bar) {
  if (!p.has_bytes() && p.elapsed_ms() == 0 && p.phase() == v1::MIGRATION_PHASE_UNSPECIFIED) {
    return "";
  }
  std::string text = PhaseName(p.phase());
  const char* sep = text.empty() ? "" : (bar ? " " : ", ");
  const std::string elapsed =
      p.elapsed_ms() > 0 ? HumanDuration(absl::Milliseconds(p.elapsed_ms())) : "";
  if (!p.has_bytes()) {
    absl::StrAppend(&text, sep, "elapsed ",
                    absl::StrFormat("%.1f s", static_cast<double>(p.elapsed_ms()) / 1000.0),
                    " (this hypervisor reports no byte counts)");
    return text;
  }
  if (p.bytes_total() == 0) {
    absl::StrAppend(&text, sep, "waiting for the first byte counts",
                    elapsed.empty() ? "" : ", elapsed ", elapsed);
    return text;
  }
  double pct = p.percent();
  if (pct <= 0) {
    const uint64_t left = std::min(p.bytes_remaining(), p.bytes_total());
    pct =
        100.0 * static_cast<double>(p.bytes_total() - left) / static_cast<double>(p.bytes_total());
  }
  pct = std::clamp(pct, 0.0, 100.0);
  const std::string figures =
      absl::StrCat("remaining ", MiB(p.bytes_remaining()), " of ", MiB(p.bytes_total()),
                   " MiB, sent ", MiB(p.bytes_processed()), " MiB");
  if (bar) {
    constexpr int kBar = 24;
    const int filled = static_cast<int>(std::lround(pct / 100.0 * kBar));
    absl::StrAppend(&text, sep, "[", std::string(filled, '#'), std::string(kBar - filled, '.'),
                    "] ", absl::StrFormat("%5.1f%%", pct), "  ", figures);
    if (p.rate_bytes_s() > 0) absl::StrAppend(&text, "  ", MiB(p.rate_bytes_s()), " MiB/s");
    if (!elapsed.empty()) absl::StrAppend(&text, "  elapsed ", elapsed);
  } else {
    absl::StrAppend(&text, sep, absl::StrFormat("%.1f%%", pct), " (", figures, ")");
    if (!elapsed.empty()) absl::StrAppend(&text, ", elapsed ", elapsed);
    if (p.iteration() > 0) absl::StrAppend(&text, ", pass ", p.iteration());
  }
  return text;
}

}  // namespace

std::string ProgressLine(const sv1::Migration& m) {
  std::string line = StatusName(m.status());
  if (m.step() != v1::MIGRATION_STEP_UNSPECIFIED) {
    absl::StrAppend(&line, ": ", sched::StepName(m.step()));
  }
  const std::string transfer = TransferText(m.progress(), true);
  if (!transfer.empty()) absl::StrAppend(&line, " | ", transfer);
  return line;
}

std::string SummaryLine(const sv1::Migration& m) {
  const std::string took = HumanDuration(MigrationDuration(m));
  const std::string id = absl::StrCat("Migration ", m.number());
  switch (m.status()) {
    case v1::MIGRATION_STATUS_COMPLETED: {
      std::string s = absl::StrCat(id, " completed: ", Name(m), " moved from ", m.source_host(),
                                   " to ", m.dest_host(), " in ", took);
      if (m.progress().elapsed_ms() > 0) {
        absl::StrAppend(&s, " (transfer ",
                        HumanDuration(absl::Milliseconds(m.progress().elapsed_ms())), ")");
      }
      if (m.progress().downtime_ms() > 0) {
        absl::StrAppend(&s, ", downtime ", m.progress().downtime_ms(), " ms");
      }
      return s + ".";
    }
    case v1::MIGRATION_STATUS_FAILED:
      return absl::StrCat(id, " failed after ", took, "; ", Name(m), " stays on ", m.source_host(),
                          ": ", OrDash(m.failure_reason()));
    case v1::MIGRATION_STATUS_CANCELLED:
      // failure_reason already says who aborted it and why ("aborted by X: reason").
      return absl::StrCat(
          id, " cancelled after ", took, "; ", Name(m), " stays on ", m.source_host(), ": ",
          m.failure_reason().empty() ? absl::StrCat("aborted by ", OrDash(m.aborted_by()))
                                     : m.failure_reason());
    case v1::MIGRATION_STATUS_ERROR:
      return absl::StrCat(id, " is in error after ", took, ": ", OrDash(m.failure_reason()),
                          ". The scheduler keeps working on it (where the VM runs is not proven).");
    default:
      return absl::StrCat(id, " is ", StatusName(m.status()), " after ", took, ".");
  }
}

// ---- objects -------------------------------------------------------------------------------

std::string RenderMigration(const sv1::Migration& m) {
  FieldTable f;
  f.Add("id", m.id());
  f.Add("number", absl::StrCat(m.number()));
  f.Add("status", StatusName(m.status()));
  f.Add("step", m.step() == v1::MIGRATION_STEP_UNSPECIFIED ? "-" : sched::StepName(m.step()));
  f.Add("instance", m.instance_name().empty()
                        ? m.instance_uuid()
                        : absl::StrCat(m.instance_name(), " (", m.instance_uuid(), ")"));
  f.Add("source host", m.source_host());
  f.Add("destination host", DestText(m));
  f.Add("options", Wrap(OptionsSummary(m.options()), 70));
  f.Add("block migration", YesNo(m.block_migration()));
  f.Add("transfer", OrDash(TransferText(m.progress(), false)));
  if (m.progress().downtime_ms() > 0) {
    // While the transfer runs, libvirt's figure is its estimate; after it, the measured one.
    const bool done = m.status() == v1::MIGRATION_STATUS_COMPLETED ||
                      m.status() == v1::MIGRATION_STATUS_POST_MIGRATING;
    f.Add(done ? "downtime" : "expected downtime", absl::StrCat(m.progress().downtime_ms(), " ms"));
  }
  f.Add("post-copy started", YesNo(m.post_copy_started()));
  f.Add("memory claimed", SizeMiB(static_cast<int64_t>(m.memory_claimed_mib())));
  f.Add("requester", OrDash(m.requester()));
  f.Add("request id", OrDash(m.request_id()));
  if (!m.aborted_by().empty()) {
    f.Add("aborted by", m.aborted_by());
    f.Add("abort reason", OrDash(m.abort_reason()));
  }
  if (!m.force_completed_by().empty()) f.Add("force-completed by", m.force_completed_by());
  if (!m.failure_reason().empty()) f.Add("failure reason", Wrap(m.failure_reason(), 70));
  if (!m.evacuation_id().empty()) f.Add("evacuation", m.evacuation_id());
  f.Add("created at", FormatTime(m.created_at()));
  f.Add("transfer started at", FormatTime(m.transfer_started_at()));
  f.Add("finished at", FormatTime(m.finished_at()));
  f.Add("updated at", FormatTime(m.updated_at()));
  if (IsSet(m.finished_at())) f.Add("duration", HumanDuration(MigrationDuration(m)));
  std::string out = f.Render();
  if (m.candidates_size() > 0) {
    Table c({"Candidate", "Rank", "Passed", "Memory available", "In flight"});
    for (const auto& h : m.candidates()) {
      c.AddRow({h.host(), h.rank() ? absl::StrCat(h.rank()) : "-", YesNo(h.passed()),
                SizeMiB(h.memory_available_mib()), absl::StrCat(h.migrations_in_flight())});
    }
    absl::StrAppend(&out, "\nDestination candidates (best first):\n", c.Render());
  }
  // Events name their host only where the scheduler records it; no empty column otherwise.
  bool hosts = false;
  for (const auto& e : m.events()) hosts = hosts || !e.host().empty();
  std::vector<std::string> headers = {"#", "Step", "Outcome", "Started", "Duration"};
  if (hosts) headers.push_back("Host");
  headers.push_back("Detail");
  Table t(headers);
  for (const auto& e : m.events()) {
    std::vector<std::string> row = {absl::StrCat(e.seq()), sched::StepName(e.step()),
                                    OutcomeName(e.outcome()), FormatTime(e.started_at(), true),
                                    e.outcome() == sv1::STEP_OUTCOME_STARTED && e.duration_ms() == 0
                                        ? "-"
                                        : HumanDuration(absl::Milliseconds(e.duration_ms()))};
    if (hosts) row.push_back(OrDash(e.host()));
    row.push_back(Wrap(OrDash(e.detail()), 70));
    t.AddRow(std::move(row));
  }
  absl::StrAppend(&out, "\nStep timeline (", m.events_size(), " events, oldest first):\n",
                  t.Render());
  return out;
}

std::string RenderMigrationList(const sv1::ListMigrationsResponse& r) {
  Table t(
      {"Id", "UUID", "Instance", "Source", "Dest", "Status", "Step", "Created At", "Updated At"});
  for (const auto& m : r.migrations()) {
    t.AddRow({absl::StrCat(m.number()), m.id(), Name(m), m.source_host(), OrDash(m.dest_host()),
              StatusName(m.status()),
              m.step() == v1::MIGRATION_STEP_UNSPECIFIED ? "-" : sched::StepName(m.step()),
              FormatTime(m.created_at()), FormatTime(m.updated_at())});
  }
  return t.Render();
}

std::string RenderCheck(const sv1::CheckMigrationResponse& r) {
  Table t({"Host", "Check", "Result", "Reason"});
  for (const auto& c : r.instance_checks()) {
    t.AddRow({c.host().empty() ? absl::StrCat("(instance, on ", r.source_host(), ")") : c.host(),
              c.name(), CheckResultText(c), Wrap(OrDash(c.reason()), 70)});
  }
  for (const auto& h : r.hosts()) {
    bool any_failed = false;
    for (const auto& c : h.checks()) {
      t.AddRow({h.host(), c.name(), CheckResultText(c), Wrap(OrDash(c.reason()), 70)});
      any_failed = any_failed || (!c.passed() && !c.skipped());
    }
    if (!h.passed() && !any_failed) {
      t.AddRow({h.host(), "(overall)", "FAIL", "refused without a failed check being reported"});
    }
  }
  Table c({"Candidate", "Rank", "Passed", "Memory available", "In flight"});
  for (const auto& h : r.hosts()) {
    c.AddRow({h.host(), h.rank() ? absl::StrCat(h.rank()) : "-", YesNo(h.passed()),
              SizeMiB(h.memory_available_mib()), absl::StrCat(h.migrations_in_flight())});
  }
  std::string out = absl::StrCat("Dry run for instance ", r.instance_uuid(), " on ",
                                 r.source_host(), ": nothing was changed.\n", t.Render(), "\n",
                                 c.Render(), "\n", RenderDisks(r.instance_disks()));
  if (r.passed()) {
    absl::StrAppend(&out, "Result: the migration would be accepted; destination: ",
                    OrDash(r.chosen_host()), "\n");
  } else {
    absl::StrAppend(&out, "Result: the migration would fail: see the FAIL rows above.\n");
  }
  return out;
}

std::string RenderHost(const sv1::Host& h) {
  const v1::HostInventory& i = h.inventory();
  FieldTable f;
  f.Add("host", i.hostname());
  f.Add("status", h.enabled() ? "enabled" : "disabled");
  f.Add("state", h.up() ? "up" : "down");
  if (!h.enabled()) {
    f.Add("disabled reason", OrDash(h.disabled_reason()));
    f.Add("disabled by", OrDash(h.disabled_by()));
    f.Add("disabled at", FormatTime(h.disabled_at()));
  }
  f.Add("hypervisor",
        absl::StrCat(i.hypervisor_type(), " ", HypervisorVersion(i.hypervisor_version())));
  if (i.libvirt_version()) f.Add("libvirt", HypervisorVersion(i.libvirt_version()));
  if (!i.driver_uri().empty()) f.Add("driver uri", i.driver_uri());
  f.Add("agent address", OrDash(i.agent_address()));
  f.Add("agent version", OrDash(i.agent_version()));
  f.Add("cpu", absl::StrCat(i.cpu().arch(), " ", i.cpu().model(),
                            i.cpu().count() ? absl::StrCat(", ", i.cpu().count(), " CPUs") : ""));
  f.Add("cpu features", Wrap(absl::StrJoin(i.cpu().features(), " "), 70));
  f.Add("memory total", SizeMiB(static_cast<int64_t>(i.memory_total_mib())));
  f.Add("memory free", SizeMiB(static_cast<int64_t>(i.memory_free_mib())));
  f.Add("memory reserved (dom0)", SizeMiB(static_cast<int64_t>(i.memory_reserved_mib())));
  f.Add("memory claimed (inbound)", SizeMiB(static_cast<int64_t>(h.memory_claimed_mib())));
  f.Add("memory available", SizeMiB(h.memory_available_mib()));
  std::vector<std::string> nets;
  for (const auto& n : i.networks()) {
    nets.push_back(n.segment().empty() || n.segment() == n.name()
                       ? n.name()
                       : absl::StrCat(n.name(), " (segment ", n.segment(), ")"));
  }
  f.Add("networks", OrDash(absl::StrJoin(nets, ", ")));
  f.Add("instance path", OrDash(i.instance_path()));
  std::vector<std::string> mounts;
  for (const auto& s : i.storage_mounts()) {
    mounts.push_back(absl::StrCat(s.mount_point(), s.shared() ? " (shared)" : ""));
  }
  f.Add("shared storage", OrDash(absl::StrJoin(mounts, "\n")));
  const v1::BackendCapabilities& c = i.capabilities();
  std::vector<std::string> caps;
  auto cap = [&](bool b, const char* n) {
    if (b) caps.push_back(n);
  };
  cap(c.supports_live(), "live");
  cap(c.supports_offline(), "offline");
  cap(c.supports_abort(), "abort");
  cap(c.supports_force_complete(), "force-complete");
  cap(c.supports_post_copy(), "post-copy");
  cap(c.supports_bandwidth(), "bandwidth");
  cap(c.supports_max_downtime(), "max-downtime");
  cap(c.supports_job_stats_bytes(), "byte-progress");
  cap(c.supports_block_migration(), "block-migration");
  cap(c.supports_completion_timeout(), "completion-timeout");
  f.Add("backend profile", OrDash(c.profile()));
  f.Add("backend supports", Wrap(OrDash(absl::StrJoin(caps, " ")), 70));
  // Xen: the paging modes (`xl info` virt_caps); PV guests migrate only with shadow paging.
  if (c.has_pv_live_migration()) {
    f.Add("xen virt_caps",
          Wrap(absl::StrCat(absl::StrJoin(c.xen_virt_caps(), " "),
                            c.pv_live_migration()
                                ? " (shadow paging: PV guests can live-migrate)"
                                : " (no shadow paging: PV guests cannot live-migrate from or to "
                                  "this host; PVH and HVM guests can)"),
               70));
  } else if (!c.xen_info_error().empty()) {
    f.Add("xen virt_caps", Wrap(absl::StrCat("unknown: ", c.xen_info_error()), 70));
  }
  f.Add("instances", absl::StrCat(h.instance_count()));
  f.Add("migrations in / out", absl::StrCat(h.migrations_in(), " / ", h.migrations_out()));
  f.Add("last report at", FormatTime(h.last_report_at()));
  if (IsSet(h.created_at())) f.Add("first seen at", FormatTime(h.created_at()));
  std::string out = f.Render();
  if (i.domains_size() > 0) {
    Table d({"Domain UUID", "Name", "State", "Memory"});
    for (const auto& dom : i.domains()) {
      d.AddRow({dom.uuid(), dom.name(), sched::DomainStateName(dom.state()),
                SizeMiB(static_cast<int64_t>(dom.memory_mib()))});
    }
    absl::StrAppend(&out, "\nDomains:\n", d.Render());
  }
  return out;
}

std::string RenderHostList(const sv1::ListHostsResponse& r) {
  Table t({"Host", "Status", "State", "Hypervisor", "Instances", "Memory free/total", "Available",
           "Migr in/out", "Last Report", "Disabled Reason"});
  for (const auto& h : r.hosts()) {
    const auto& i = h.inventory();
    t.AddRow({i.hostname(), h.enabled() ? "enabled" : "disabled", h.up() ? "up" : "down",
              absl::StrCat(i.hypervisor_type(), " ", HypervisorVersion(i.hypervisor_version())),
              absl::StrCat(h.instance_count()),
              absl::StrCat(i.memory_free_mib(), "/", i.memory_total_mib(), " MiB"),
              SizeMiB(h.memory_available_mib()),
              absl::StrCat(h.migrations_in(), "/", h.migrations_out()),
              FormatTime(h.last_report_at()), OrDash(h.disabled_reason())});
  }
  return t.Render();
}

std::string DiskKindName(const v1::DomainDisk& d) {
  switch (d.kind()) {
    case v1::DISK_KIND_UNSPECIFIED:
      return OrDash(d.type());
    case v1::DISK_KIND_FILE:
      return "file";
    case v1::DISK_KIND_BLOCK:
      return "block";
    case v1::DISK_KIND_ISCSI:
      return "iscsi";
    case v1::DISK_KIND_DRBD:
      return "drbd";
    case v1::DISK_KIND_OTHER:
      return "other";
    default:
      return absl::StrCat("unknown(", static_cast<int>(d.kind()), ")");
  }
}

std::string RenderDisks(const google::protobuf::RepeatedPtrField<v1::DomainDisk>& disks) {
  if (disks.empty()) return "Disks: none reported\n";
  // The source path whole on its first line (paths are copied, never cut), the identity below.
  Table t({"Device", "Kind", "Source and identity", "Volume", "Shared", "Size"});
  for (const auto& d : disks) {
    std::vector<std::string> lines = {d.source().empty() ? "(empty drive)" : d.source()};
    if (!d.iscsi_target().empty()) {
      lines.push_back(absl::StrCat("target ", d.iscsi_target(), " lun ", d.iscsi_lun()));
    }
    if (!d.iscsi_portal().empty()) lines.push_back(absl::StrCat("portal ", d.iscsi_portal()));
    if (!d.drbd_resource().empty()) lines.push_back(absl::StrCat("resource ", d.drbd_resource()));
    if (!d.device_id().empty()) {
      // A DRBD identity names itself ("drbd:r0/0"); a SCSI one is the device's WWID.
      lines.push_back(absl::StartsWith(d.device_id(), "drbd:")
                          ? d.device_id()
                          : absl::StrCat("wwid ", d.device_id()));
    } else if (d.kind() == v1::DISK_KIND_ISCSI || d.kind() == v1::DISK_KIND_BLOCK) {
      lines.push_back("wwid unknown");
    }
    t.AddRow({OrDash(d.target_dev()),
              absl::StrCat(DiskKindName(d), d.read_only() ? " (read-only)" : ""),
              absl::StrJoin(lines, "\n"), OrDash(d.volume()), d.shared() ? "yes" : "no (local)",
              d.capacity_mib() ? SizeMiB(static_cast<int64_t>(d.capacity_mib())) : "-"});
  }
  return absl::StrCat("Disks:\n", t.Render());
}

std::string RenderInstance(const sv1::Instance& i) {
  FieldTable f;
  f.Add("uuid", i.uuid());
  f.Add("name", OrDash(i.name()));
  f.Add("host", OrDash(i.host()));
  f.Add("state", sched::DomainStateName(i.state()));
  f.Add("task state", i.task_state() == sv1::TASK_STATE_MIGRATING ? "migrating" : "-");
  f.Add("active migration", OrDash(i.active_migration_id()));
  f.Add("memory", SizeMiB(static_cast<int64_t>(i.memory_mib())));
  f.Add("vcpus", absl::StrCat(i.vcpus()));
  f.Add("persistent", YesNo(i.persistent()));
  f.Add("missing", i.missing() ? absl::StrCat("yes, since ", FormatTime(i.missing_since())) : "no");
  if (IsSet(i.last_seen_at())) f.Add("last seen at", FormatTime(i.last_seen_at()));
  if (IsSet(i.created_at())) f.Add("created at", FormatTime(i.created_at()));
  f.Add("updated at", FormatTime(i.updated_at()));
  return absl::StrCat(f.Render(), "\n", RenderDisks(i.disks()));
}

std::string RenderInstanceList(const sv1::ListInstancesResponse& r) {
  Table t({"UUID", "Name", "Host", "State", "Task State", "Memory", "vCPUs", "Migration"});
  for (const auto& i : r.instances()) {
    t.AddRow({i.uuid(), OrDash(i.name()), OrDash(i.host()),
              sched::DomainStateName(i.state()) + (i.missing() ? " (missing)" : ""),
              i.task_state() == sv1::TASK_STATE_MIGRATING ? "migrating" : "-",
              SizeMiB(static_cast<int64_t>(i.memory_mib())), absl::StrCat(i.vcpus()),
              OrDash(i.active_migration_id())});
  }
  return t.Render();
}

std::string RenderEvacuation(const sv1::Evacuation& e) {
  FieldTable f;
  f.Add("id", e.id());
  f.Add("host", e.host());
  f.Add("status", EvacuationStatusName(e.status()));
  f.Add("max parallel", absl::StrCat(e.max_parallel()));
  f.Add("destination",
        e.destination().empty() ? "(scheduler's choice per instance)" : e.destination());
  f.Add("instances", absl::StrCat(e.total(), " total: ", e.succeeded(), " succeeded, ", e.failed(),
                                  " failed, ", e.skipped(), " skipped, ",
                                  e.cancelled() ? absl::StrCat(e.cancelled(), " cancelled, ") : "",
                                  e.in_progress(), " in progress"));
  f.Add("requested by", OrDash(e.requested_by()));
  f.Add("request id", OrDash(e.request_id()));
  if (!e.failure_reason().empty()) f.Add("failure reason", Wrap(e.failure_reason(), 70));
  if (e.has_cancel_requested_at()) {
    f.Add("cancelled by", OrDash(e.cancelled_by()));
    f.Add("cancel reason", Wrap(OrDash(e.cancel_reason()), 70));
    f.Add("cancelled at", FormatTime(e.cancel_requested_at()));
  }
  f.Add("created at", FormatTime(e.created_at()));
  f.Add("updated at", FormatTime(e.updated_at()));
  f.Add("finished at", FormatTime(e.finished_at()));
  Table t({"Instance", "Name", "Outcome", "Migration", "Destination", "Reason"});
  for (const auto& it : e.items()) {
    t.AddRow({it.instance_uuid(), OrDash(it.instance_name()),
              EvacuationItemOutcomeName(it.outcome()), OrDash(it.migration_id()),
              OrDash(it.dest_host()), Wrap(OrDash(it.reason()), 60)});
  }
  return absl::StrCat(f.Render(), "\nInstances:\n", t.Render());
}

std::string RenderEvacuationList(const sv1::ListEvacuationsResponse& r) {
  Table t({"Id", "Host", "Status", "Total", "Succeeded", "Failed", "Skipped", "In Progress",
           "Requested By", "Created At", "Finished At"});
  for (const auto& e : r.evacuations()) {
    t.AddRow({e.id(), e.host(), EvacuationStatusName(e.status()), absl::StrCat(e.total()),
              absl::StrCat(e.succeeded()), absl::StrCat(e.failed()), absl::StrCat(e.skipped()),
              absl::StrCat(e.in_progress()), OrDash(e.requested_by()), FormatTime(e.created_at()),
              FormatTime(e.finished_at())});
  }
  return t.Render();
}

std::string ToJson(const google::protobuf::Message& m) {
  sched::ApiJsonOptions o;
  o.always_print_primitive_fields = true;
  o.pretty = true;
  return sched::ToApiJson(m, o);
}

}  // namespace livemig::cloudctl
