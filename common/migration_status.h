// Migration statuses with Nova's names, and the rules that every part applies to them:
// which are terminal, which hold the instance, and which transitions the state machine allows.
//
//   accepted → queued → preparing → running → running (post-copy) → post-migrating → completed
//   any of accepted..running → failed | cancelled (docs/DESIGN.md § The migration flow, row R)
//   post-migrating → error (roll-forward could not finish); error → completed | failed
//
// `error` is not terminal: the VM's location is unproven, so the instance stays claimed and the
// reconciler keeps working on it.
#ifndef LIVEMIG_COMMON_MIGRATION_STATUS_H_
#define LIVEMIG_COMMON_MIGRATION_STATUS_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace livemig {

enum class MigrationStatus {
  kAccepted,
  kQueued,
  kPreparing,
  kRunning,
  kRunningPostCopy,
  kPostMigrating,
  kCompleted,
  kFailed,
  kCancelled,
  kError,
};

// Nova's spelling: "accepted", ..., "running (post-copy)", "post-migrating", ...
std::string ToString(MigrationStatus status);

// Parses Nova's spelling (also accepts "running-post-copy" and "post_migrating" forms);
// nullopt for anything else.
std::optional<MigrationStatus> ParseMigrationStatus(std::string_view text);

// completed, failed, cancelled: nothing more will happen to the migration.
bool IsTerminal(MigrationStatus status);

// Not terminal: the migration holds its instance and its destination memory claim.
inline bool IsActive(MigrationStatus status) { return !IsTerminal(status); }

// preparing, running, running (post-copy), post-migrating: the migration occupies a slot of the
// per-host and total concurrency limits (queued and accepted ones wait for one).
bool HoldsSlot(MigrationStatus status);

// True once the domain may be running on the destination only: from here a failure rolls
// forward (or is `error`), never back to the source.
bool IsPastPointOfNoReturn(MigrationStatus status);

// Whether the state machine may move from `from` to `to` (same-status "transitions" are not
// transitions and return false).
bool CanTransition(MigrationStatus from, MigrationStatus to);

// Every status, in flow order (for help texts, validation and tests).
const std::vector<MigrationStatus>& AllMigrationStatuses();

}  // namespace livemig

#endif  // LIVEMIG_COMMON_MIGRATION_STATUS_H_
