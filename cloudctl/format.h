// How cloudctl shows things to a person: text tables, names of the API's enum values, times,
// durations, sizes, and the one-line progress view of a migration used by --wait. Pure functions
// (no I/O, no clock reads), so that the output is testable without a scheduler.
//
// Example:
//   Table t({"Host", "Status"});
//   t.AddRow({"host-a", "enabled"});
//   std::cout << t.Render();
//   // +--------+---------+
//   // | Host   | Status  |
//   // +--------+---------+
//   // | host-a | enabled |
//   // +--------+---------+
#ifndef LIVEMIG_CLOUDCTL_FORMAT_H_
#define LIVEMIG_CLOUDCTL_FORMAT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "proto/scheduler.pb.h"

namespace livemig::cloudctl {

namespace v1 = ::livemig::v1;
namespace sv1 = ::livemig::scheduler::v1;

// A text table in the style of the OpenStack client (boxed, left-aligned columns). Cells may
// hold several lines (split on '\n').
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void AddRow(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }
  // The table, each line ending with '\n'. A table without rows still shows its headers.
  std::string Render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// A two-column "Field | Value" table, as `openstack ... show` prints one object.
class FieldTable {
 public:
  void Add(const std::string& field, const std::string& value);
  std::string Render() const;

 private:
  Table table_{{"Field", "Value"}};
};

// Nova's spelling of a migration status ("running (post-copy)"); "unknown(N)" for values this
// cloudctl does not know (a newer scheduler).
std::string StatusName(v1::MigrationStatus s);
// completed, failed or cancelled.
bool IsTerminalStatus(v1::MigrationStatus s);
// The end of a --wait: terminal, or error (which the server does not treat as terminal).
bool EndsWait(v1::MigrationStatus s);
// "pre-copy", "post-copy", "paused-to-complete", "offline-copy"; "" when unspecified.
std::string PhaseName(v1::MigrationPhase p);
// "started", "succeeded", "failed", "skipped".
std::string OutcomeName(sv1::StepOutcome o);
std::string EvacuationStatusName(sv1::EvacuationStatus s);
std::string EvacuationItemOutcomeName(sv1::EvacuationItemOutcome o);
// The live-migration options as one line ("live, block migration auto, completion timeout
// 800 s (abort), ...").
std::string OptionsSummary(const v1::MigrationOptions& o);

// "2024-05-01T12:34:56Z" (UTC); "-" for an unset timestamp. With millis: "...:56.123Z".
std::string FormatTime(const google::protobuf::Timestamp& t, bool millis = false);
// "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min".
std::string HumanDuration(absl::Duration d);
// Bytes as MiB with one decimal ("230.5").
std::string MiB(uint64_t bytes);
// "1.0 GiB"-style size for MiB counts ("512 MiB", "15.5 GiB").
std::string SizeMiB(int64_t mib);
std::string YesNo(bool b);
// "-" for an empty string.
std::string OrDash(const std::string& s);

// One line showing where a migration stands, for --wait, e.g.
//   "running: live_migration | pre-copy [#########...........]  45.2%  230.0/512.0 MiB"
//   "running: live_migration | elapsed 12.3 s (this hypervisor reports no byte counts)"
//   "preparing: pre_live_migration"
std::string ProgressLine(const sv1::Migration& m);

// The closing line of a --wait, e.g.
//   "Migration 7 completed: web-1 moved from host-a to host-b in 4.2 s (downtime 35 ms)."
//   "Migration 7 failed after 3.1 s (web-1 stays on host-a): <reason>"
std::string SummaryLine(const sv1::Migration& m);

// "file", "block", "iscsi", "drbd", "other"; the libvirt disk type ("file", "network", ...) when
// the kind is unspecified (an agent that does not tell); "unknown(N)" for a newer kind.
std::string DiskKindName(const v1::DomainDisk& d);
// An instance's disks, one row each: device, kind, the source path (whole, never cut) with the
// identity below it (iSCSI target, LUN and portal; DRBD resource; the device's WWID or DRBD
// minor), the configured volume, shared or local, size. "Disks: none reported\n" when there are
// none. instance-show and the dry run both print it:
//   Disks:
//   +--------+------+---------------------+--------+--------+------+
//   | Device | Kind | Source and identity | Volume | Shared | Size |
//   +--------+------+---------------------+--------+--------+------+
//   | xvdb   | drbd | /dev/drbd0          | r0     | yes    | -    |
//   |        |      | resource r0         |        |        |      |
//   |        |      | drbd:r0/0           |        |        |      |
//   +--------+------+---------------------+--------+--------+------+
std::string RenderDisks(const google::protobuf::RepeatedPtrField<v1::DomainDisk>& disks);

// Tables for the API's objects.
std::string RenderMigration(const sv1::Migration& m);  // fields, then the step timeline
std::string RenderMigrationList(const sv1::ListMigrationsResponse& r);
std::string RenderCheck(const sv1::CheckMigrationResponse& r);  // dry run: every check
std::string RenderHost(const sv1::Host& h);
std::string RenderHostList(const sv1::ListHostsResponse& r);
std::string RenderInstance(const sv1::Instance& i);
std::string RenderInstanceList(const sv1::ListInstancesResponse& r);
std::string RenderEvacuation(const sv1::Evacuation& e);
std::string RenderEvacuationList(const sv1::ListEvacuationsResponse& r);

// The message as JSON (proto field names, every field printed, indented), with the REST API's
// enum names (sched::ApiEnumName: "running", "live_migration", not MIGRATION_STATUS_RUNNING).
std::string ToJson(const google::protobuf::Message& m);

}  // namespace livemig::cloudctl

#endif  // LIVEMIG_CLOUDCTL_FORMAT_H_
