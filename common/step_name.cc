#include "common/step_name.h"

#include <cctype>

namespace livemig {

std::string StepName(v1::MigrationStep step) {
  std::string name = v1::MigrationStep_Name(step);
  const std::string prefix = "MIGRATION_STEP_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

v1::MigrationStep StepFromName(absl::string_view name) {
  // The store writes the accept step (migration row and first event) as "accepted".
  if (name == "accepted") return v1::MIGRATION_STEP_ACCEPT;
  std::string upper = "MIGRATION_STEP_";
  for (char c : name) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  v1::MigrationStep s = v1::MIGRATION_STEP_UNSPECIFIED;
  v1::MigrationStep_Parse(upper, &s);
  return s;
}

}  // namespace livemig
