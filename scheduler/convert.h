// Translations between the database's records and the wire contracts: the one place where a
// status, a step, a time or an option changes representation.
#ifndef LIVEMIG_SCHEDULER_CONVERT_H_
#define LIVEMIG_SCHEDULER_CONVERT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/step_name.h"
#include "db/records.h"
#include "google/protobuf/timestamp.pb.h"
#include "proto/scheduler.pb.h"

namespace livemig::sched {

namespace v1 = ::livemig::v1;
namespace sv1 = ::livemig::scheduler::v1;

google::protobuf::Timestamp ToProtoTime(absl::Time t);
absl::Time FromProtoTime(const google::protobuf::Timestamp& t);

v1::MigrationStatus ToProtoStatus(MigrationStatus s);
// InvalidArgument for UNSPECIFIED or unknown values.
absl::StatusOr<MigrationStatus> FromProtoStatus(v1::MigrationStatus s);

// MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST -> "check_can_live_migrate_on_dest"
// (common/step_name.h).
using ::livemig::StepName;

// Options are stored as their proto3 JSON on the migration row.
std::string OptionsToJson(const v1::MigrationOptions& o);
v1::MigrationOptions OptionsFromJson(const std::string& json);

// The agent's inventory as a host report for the store.
db::HostReport ReportFromInventory(const v1::HostInventory& inv);
// The stored host as the API shows it (with the capabilities parsed back).
sv1::Host ToProtoHost(const db::HostRecord& h);
sv1::Instance ToProtoInstance(const db::InstanceRecord& i);
// The ranked destination candidates as stored on the migration row (a JSON array of HostCheck,
// proto3 JSON, at most `max` of them), and back (an unparsable value gives none).
std::string CandidatesToJson(const std::vector<sv1::HostCheck>& ranked, size_t max);
google::protobuf::RepeatedPtrField<sv1::HostCheck> CandidatesFromJson(const std::string& json);
// An instance's disks as stored on its row (a JSON array of DomainDisk, proto3 JSON with the
// proto's field names), and back (an unparsable value gives none).
std::string DisksToJson(const google::protobuf::RepeatedPtrField<v1::DomainDisk>& disks);
google::protobuf::RepeatedPtrField<v1::DomainDisk> DisksFromJson(const std::string& json);
sv1::Migration ToProtoMigration(const db::MigrationRecord& m,
                                const std::vector<db::MigrationEvent>& events = {});
v1::DomainState DomainStateFromName(const std::string& s);
std::string DomainStateName(v1::DomainState s);

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_CONVERT_H_
