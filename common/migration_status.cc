#include "common/migration_status.h"

#include <string>

namespace livemig {

std::string ToString(MigrationStatus status) {
  switch (status) {
    case MigrationStatus::kAccepted:
      return "accepted";
    case MigrationStatus::kQueued:
      return "queued";
    case MigrationStatus::kPreparing:
      return "preparing";
    case MigrationStatus::kRunning:
      return "running";
    case MigrationStatus::kRunningPostCopy:
      return "running (post-copy)";
    case MigrationStatus::kPostMigrating:
      return "post-migrating";
    case MigrationStatus::kCompleted:
      return "completed";
    case MigrationStatus::kFailed:
      return "failed";
    case MigrationStatus::kCancelled:
      return "cancelled";
    case MigrationStatus::kError:
      return "error";
  }
  return "unknown";
}

const std::vector<MigrationStatus>& AllMigrationStatuses() {
  static const auto* const kAll = new std::vector<MigrationStatus>{
      MigrationStatus::kAccepted,        MigrationStatus::kQueued,
      MigrationStatus::kPreparing,       MigrationStatus::kRunning,
      MigrationStatus::kRunningPostCopy, MigrationStatus::kPostMigrating,
      MigrationStatus::kCompleted,       MigrationStatus::kFailed,
      MigrationStatus::kCancelled,       MigrationStatus::kError};
  return *kAll;
}

std::optional<MigrationStatus> ParseMigrationStatus(std::string_view text) {
  std::string norm(text);
  for (char& c : norm) {
    if (c == '_') c = '-';
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (norm == "running-post-copy" || norm == "running-postcopy") {
    return MigrationStatus::kRunningPostCopy;
  }
  for (MigrationStatus s : AllMigrationStatuses()) {
    if (norm == ToString(s)) return s;
  }
  return std::nullopt;
}

bool IsTerminal(MigrationStatus status) {
  return status == MigrationStatus::kCompleted || status == MigrationStatus::kFailed ||
         status == MigrationStatus::kCancelled;
}

bool IsPastPointOfNoReturn(MigrationStatus status) {
  return status == MigrationStatus::kRunningPostCopy || status == MigrationStatus::kPostMigrating ||
         status == MigrationStatus::kCompleted;
}

bool HoldsSlot(MigrationStatus status) {
  return status == MigrationStatus::kPreparing || status == MigrationStatus::kRunning ||
         status == MigrationStatus::kRunningPostCopy || status == MigrationStatus::kPostMigrating;
}

bool CanTransition(MigrationStatus from, MigrationStatus to) {
  using S = MigrationStatus;
  if (from == to || IsTerminal(from)) return false;
  switch (from) {
    case S::kAccepted:
      return to == S::kQueued || to == S::kPreparing || to == S::kFailed || to == S::kCancelled ||
             to == S::kError;
    case S::kQueued:
      return to == S::kPreparing || to == S::kFailed || to == S::kCancelled || to == S::kError;
    case S::kPreparing:
      return to == S::kRunning || to == S::kFailed || to == S::kCancelled || to == S::kError;
    case S::kRunning:
      return to == S::kRunningPostCopy || to == S::kPostMigrating || to == S::kFailed ||
             to == S::kCancelled || to == S::kError;
    case S::kRunningPostCopy:
      // No rollback to the source once post-copy started.
      return to == S::kPostMigrating || to == S::kError;
    case S::kPostMigrating:
      return to == S::kCompleted || to == S::kError;
    case S::kError:
      // The reconciler proved where the VM runs.
      return to == S::kCompleted || to == S::kFailed || to == S::kPostMigrating;
    default:
      return false;
  }
}

}  // namespace livemig
