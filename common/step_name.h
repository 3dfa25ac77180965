// The name of a migration step as logs, events, the database and the APIs spell it, and back.
#ifndef LIVEMIG_COMMON_STEP_NAME_H_
#define LIVEMIG_COMMON_STEP_NAME_H_

#include <string>

#include "absl/strings/string_view.h"
#include "proto/common.pb.h"

namespace livemig {

// "check_can_live_migrate_on_dest" for MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, etc.
std::string StepName(v1::MigrationStep step);

// The step a name spells (StepName's, or "accepted", the database's name of the accept step);
// MIGRATION_STEP_UNSPECIFIED for "" or a name no step has.
v1::MigrationStep StepFromName(absl::string_view name);

}  // namespace livemig

#endif  // LIVEMIG_COMMON_STEP_NAME_H_
