// FinishedRetention: how long something that finished (a migration's record in the agent, a
// transfer in a driver) is remembered, so that a repeated request about it still gets its answer,
// without a long-running process growing with every migration it ever served.
//
// Each finished key is kept for `keep` after it finished, and only the `max_count` most recently
// finished are kept: whichever limit is reached first drops it. What is not yet finished is never
// here, so never dropped. The owner notes each key when it finishes and, whenever convenient
// (each call, each end), drops what Expire returns. O(log n) per key; Expire costs O(1) when
// nothing is due.
//
// Not thread-safe: the owner's lock guards it.
#ifndef LIVEMIG_COMMON_RETENTION_H_
#define LIVEMIG_COMMON_RETENTION_H_

#include <cstddef>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace livemig {

template <typename Key>
class FinishedRetention {
 public:
  struct Limits {
    absl::Duration keep = absl::Hours(1);  // kept at least this long after finishing...
    size_t max_count = 1000;               // ...unless this many finished after it
  };

  explicit FinishedRetention(Limits limits) : limits_(limits) {}

  // `key` finished at `at`. Noting a key again moves it to its new time.
  void Finished(const Key& key, absl::Time at) {
    auto [it, inserted] = at_.try_emplace(key, at);
    if (!inserted) {
      by_time_.erase({it->second, key});
      it->second = at;
    }
    by_time_.insert({at, key});
  }

  // `key` is no longer finished (it was restarted): never dropped until noted again.
  void Forget(const Key& key) {
    auto it = at_.find(key);
    if (it == at_.end()) return;
    by_time_.erase({it->second, key});
    at_.erase(it);
  }

  // The keys to drop at `now`, oldest first, and forgets them: those that finished more than
  // `keep` before `now`, and all but the `max_count` most recently finished (ties: the smaller
  // key goes first).
  std::vector<Key> Expire(absl::Time now) {
    std::vector<Key> out;
    while (!by_time_.empty() &&
           (by_time_.size() > limits_.max_count || now - by_time_.begin()->first > limits_.keep)) {
      out.push_back(by_time_.begin()->second);
      at_.erase(by_time_.begin()->second);
      by_time_.erase(by_time_.begin());
    }
    return out;
  }

  size_t size() const { return by_time_.size(); }
  const Limits& limits() const { return limits_; }

 private:
  Limits limits_;
  std::set<std::pair<absl::Time, Key>> by_time_;  // oldest first
  std::map<Key, absl::Time> at_;
};

}  // namespace livemig

#endif  // LIVEMIG_COMMON_RETENTION_H_
