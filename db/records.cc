// The few functions of the plain records (db/records.h).
#include "db/records.h"

#include "absl/strings/str_cat.h"

namespace livemig::db {

std::string StepText(v1::MigrationStep step) {
  return step == v1::MIGRATION_STEP_ACCEPT ? "accepted" : StepName(step);
}

std::string WhyNoSlot(const SlotUse& use, const SlotLimits& limits) {
  if (use.older_queued) {
    return absl::StrCat("an older migration touching ", limits.source, " or ", limits.dest,
                        " waits in queued");
  }
  if (use.out_of_source >= limits.max_out_of_source) {
    return absl::StrCat(use.out_of_source, " migration(s) out of ", limits.source,
                        " hold its slots (at most ", limits.max_out_of_source, ")");
  }
  if (use.into_dest >= limits.max_into_dest) {
    return absl::StrCat(use.into_dest, " migration(s) into ", limits.dest,
                        " hold its slots (at most ", limits.max_into_dest, ")");
  }
  if (use.total >= limits.max_total) {
    return absl::StrCat(use.total, " migrations hold slots (at most ", limits.max_total,
                        " in total)");
  }
  return "";
}

}  // namespace livemig::db
