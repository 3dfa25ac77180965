// FakeHypervisor (driver/fake_hypervisor.h): the state directory's transactions, the transfers'
// progress by the clock, and the operations tests use to set the fake hosts up.
#include "driver/fake_hypervisor.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/status_map.h"
#include "driver/checks.h"
#include "driver/fake_state.h"

namespace livemig::driver {

using json = nlohmann::json;

namespace internal {

// Identity of state.json: a write replaces the file (rename) with a new inode whose mtime is
// strictly later than the replaced file's (see WriteState).
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = -1;
  int64_t mtime_ns = -1;
  bool operator==(const FileId& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
  }
};

// The parsed state of one state directory, shared by the process's FakeHypervisor objects on
// it. `mu` serializes the process's threads (the flock serializes processes). While a
// transaction runs, the state is moved out and `valid` is false: a transaction that fails or
// throws leaves nothing half-done behind, and the next one re-reads the file.
struct FakeStateCache {
  std::mutex mu;
  bool valid = false;  // st and index hold state.json as of `id`
  FileId id;
  json st;
  FakeStateIndex index;
};

}  // namespace internal

namespace {

using internal::FakeStateIndex;
using internal::FileId;
using internal::Get;
using internal::IsRunning;
using internal::Journal;
using internal::MkdirP;
using internal::NowMs;

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Holds the state directory's flock for its lifetime (creating the directory if needed).
class StateLock {
 public:
  StateLock() = default;
  StateLock(const StateLock&) = delete;
  StateLock& operator=(const StateLock&) = delete;
  ~StateLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock
  }
  absl::Status Acquire(const std::string& dir) {
    const std::string path = dir + "/lock";
    fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno == ENOENT) {
      RETURN_IF_ERROR(MkdirP(dir));
      fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    }
    if (fd_ < 0) return Errno("lock " + path);
    while (flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) return Errno("flock " + path);
    }
    return absl::OkStatus();
  }

 private:
  int fd_ = -1;
};

// The process's cache for `dir`: one per directory name while any object on it lives.
std::shared_ptr<internal::FakeStateCache> CacheFor(const std::string& dir) {
  static std::mutex* mu = new std::mutex;
  static auto* caches = new std::map<std::string, std::weak_ptr<internal::FakeStateCache>>;
  std::lock_guard<std::mutex> l(*mu);
  for (auto it = caches->begin(); it != caches->end();) {
    it = it->second.expired() && it->first != dir ? caches->erase(it) : std::next(it);
  }
  std::shared_ptr<internal::FakeStateCache> c = (*caches)[dir].lock();
  if (!c) {
    c = std::make_shared<internal::FakeStateCache>();
    (*caches)[dir] = c;
  }
  return c;
}

// Appends the driver actions queued by Journal to <state_dir>/journal.jsonl.
absl::Status FlushJournal(const std::string& dir, json& st) {
  if (!st.contains("journal_pending")) return absl::OkStatus();
  std::ofstream out(dir + "/journal.jsonl", std::ios::app);
  for (const auto& e : st["journal_pending"]) out << e.dump() << "\n";
  st.erase("journal_pending");
  if (!out) return Errno("append " + dir + "/journal.jsonl");
  return absl::OkStatus();
}

// When a finished transfer ended (its scheduled end if it does not say).
int64_t FinishedMs(const json& t) {
  const json& f = Get(t, "finished_ms");
  if (f.is_number()) return f.get<int64_t>();
  const json& s = Get(t, "start_ms");
  const json& d = Get(t, "duration_ms");
  return (s.is_number() ? s.get<int64_t>() : 0) + (d.is_number() ? d.get<int64_t>() : 0);
}

void NoteFinished(FakeStateIndex& idx, const std::string& id, int64_t finished_ms) {
  idx.finished.Finished(id, absl::FromUnixMillis(finished_ms));
}

FakeStateIndex BuildIndex(const json& st) {
  FakeStateIndex idx;
  for (const auto& [id, t] : Get(st, "transfers").items()) {
    if (IsRunning(t)) {
      const json& uuid = Get(t, "uuid");
      idx.running[id] = uuid.is_string() ? uuid.get<std::string>() : std::string();
    } else {
      NoteFinished(idx, id, FinishedMs(t));
    }
  }
  return idx;
}

// Moves every running transfer whose time has come to its end (in migration id order). Returns
// whether anything changed.
bool AdvanceTransfers(json& st, FakeStateIndex& idx, int64_t now) {
  bool changed = false;
  json& transfers = st["transfers"];
  for (auto it = idx.running.begin(); it != idx.running.end();) {
    const std::string id = it->first;
    auto found = transfers.find(id);
    if (found == transfers.end() || !IsRunning(*found)) {  // never: the index follows the state
      it = idx.running.erase(it);
      continue;
    }
    json& t = *found;
    if (now < t["start_ms"].get<int64_t>() + t["duration_ms"].get<int64_t>()) {
      ++it;
      continue;
    }
    changed = true;
    it = idx.running.erase(it);
    json& src = st["hosts"][t["src"].get<std::string>()];
    json& dst = st["hosts"][t["dst"].get<std::string>()];
    const std::string uuid = t["uuid"];
    t["finished_ms"] = t["start_ms"].get<int64_t>() + t["duration_ms"].get<int64_t>();
    NoteFinished(idx, id, t["finished_ms"].get<int64_t>());
    const bool fails = t.value("fail_transfer", std::string()) != "";
    Journal(st, t["src"].get<std::string>(), fails ? "transfer_failed" : "transfer_completed", id,
            t["finished_ms"].get<int64_t>(), /*automatic=*/true);
    if (fails) {
      t["state"] = "failed";
      t["error"] = t["fail_transfer"];
      dst["domains"].erase(uuid);
      if (src["domains"].contains(uuid) && t.value("paused_src", false)) {
        src["domains"][uuid]["state"] = t.value("prior_state", std::string("running"));
      }
      continue;
    }
    t["state"] = "completed";
    json dom = src["domains"].contains(uuid) ? src["domains"][uuid] : dst["domains"][uuid];
    dom["state"] = t.value("prior_state", std::string("running"));
    dom["persistent"] = true;
    dst["domains"][uuid] = dom;
    src["domains"].erase(uuid);
    dst["staged"].erase(id);
  }
  return changed;
}

// Drops the finished transfers that finished more than kFinishedTransferKeep ago, and all but
// the kMaxFinishedTransfers most recent (the index's FinishedRetention). Returns whether anything
// changed.
bool PruneTransfers(json& st, FakeStateIndex& idx, int64_t now) {
  bool changed = false;
  for (const std::string& id : idx.finished.Expire(absl::FromUnixMillis(now))) {
    st["transfers"].erase(id);
    changed = true;
  }
  return changed;
}

absl::StatusOr<std::string> ReadAll(int fd, const std::string& path) {
  std::string data;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("read " + path);
    if (n == 0) return data;
    data.append(buf, static_cast<size_t>(n));
  }
}

FileId IdOf(const struct stat& sb) {
  FileId id;
  id.dev = sb.st_dev;
  id.ino = sb.st_ino;
  id.size = sb.st_size;
  id.mtime_ns = int64_t{sb.st_mtim.tv_sec} * 1'000'000'000 + sb.st_mtim.tv_nsec;
  return id;
}

// Writes the state to a new file that replaces state.json. Its mtime is set to now, or 1 ns
// after the replaced file's (`prev`, if any) when that is not earlier, so that no two versions
// written by FakeHypervisor share an identity, even within one clock tick with a reused inode
// number. Returns the new file's identity, or an empty one (ino 0) when the filesystem does not
// keep the mtime exactly (then the state is not cached).
absl::StatusOr<FileId> WriteState(const std::string& dir, const json& st, const FileId* prev) {
  const std::string tmp = dir + "/state.json.tmp";
  const std::string data = st.dump();
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("write " + tmp);
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status s = Errno("write " + tmp);
      close(fd);
      return s;
    }
    off += static_cast<size_t>(n);
  }
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  int64_t ns = int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
  if (prev != nullptr && prev->mtime_ns >= ns) ns = prev->mtime_ns + 1;
  struct timespec times[2];
  times[0].tv_sec = times[1].tv_sec = ns / 1'000'000'000;
  times[0].tv_nsec = times[1].tv_nsec = ns % 1'000'000'000;
  FileId id;
  struct stat sb;
  if (futimens(fd, times) == 0 && fstat(fd, &sb) == 0) {
    id = IdOf(sb);
    if (id.mtime_ns != ns) id = FileId();  // coarse timestamps: not a safe identity
  }
  if (close(fd) != 0) return Errno("write " + tmp);
  if (rename(tmp.c_str(), (dir + "/state.json").c_str()) != 0) return Errno("rename state.json");
  return id;
}

}  // namespace

namespace internal {

int64_t NowMs(Clock* c) { return absl::ToUnixMillis(c->Now()); }

absl::Status MkdirP(const std::string& path) {
  std::string cur;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
        return Errno("mkdir " + cur);
      }
    }
    if (i < path.size()) cur += path[i];
  }
  return absl::OkStatus();
}

const json& Get(const json& j, const std::string& key) {
  static const json* const kNull = new json();
  if (!j.is_object()) return *kNull;
  auto it = j.find(key);
  return it == j.end() ? *kNull : *it;
}

void Journal(json& st, const std::string& host, const std::string& step, const std::string& id,
             int64_t ms, bool automatic) {
  st["journal_pending"].push_back(
      {{"host", host}, {"step", step}, {"migration_id", id}, {"ms", ms}, {"auto", automatic}});
}

bool IsRunning(const json& t) { return Get(t, "state") == "running"; }

absl::Status TakeFailure(json& st, const std::string& host, const std::string& step,
                         bool* changed) {
  // Looks without inserting: a call without an injected failure leaves the state as it was.
  auto h = st["hosts"].find(host);
  if (h == st["hosts"].end() || !h->is_object()) return absl::OkStatus();
  auto fit = h->find("failures");
  if (fit == h->end() || !fit->is_object() || !fit->contains(step)) return absl::OkStatus();
  json& f = *fit;
  json& k = f[step];
  int remaining = k.value("remaining", 1);
  absl::Status s(static_cast<absl::StatusCode>(k.value("code", 13)),
                 absl::StrCat("injected failure at ", step, " on ", host, ": ",
                              k.value("message", std::string("failure"))));
  s = WithReason(std::move(s), static_cast<v1::ErrorReason>(k.value("reason", 0)));
  if (--remaining <= 0) {
    f.erase(step);
  } else {
    k["remaining"] = remaining;
  }
  *changed = true;
  return s;
}

}  // namespace internal

FakeHypervisor::FakeHypervisor(std::string state_dir, Clock* clock)
    : dir_(std::move(state_dir)), clock_(clock), cache_(CacheFor(dir_)) {}

absl::Status FakeHypervisor::Transact(const MutateFn* mutate, const ReadFn* read) {
  internal::FakeStateCache& cache = *cache_;
  std::lock_guard<std::mutex> in_process(cache.mu);
  StateLock lock;
  RETURN_IF_ERROR(lock.Acquire(dir_));

  // The state: the cached one if state.json is still the file this process last read or wrote.
  // It is moved out of the cache; only a transaction that ends consistently puts it back.
  const std::string path = dir_ + "/state.json";
  json st;
  FakeStateIndex idx;
  FileId id;
  bool have_file = false;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) return Errno("open " + path);
    cache.valid = false;
    cache.st = json();
    st = json{{"hosts", json::object()}, {"transfers", json::object()}};
  } else {
    have_file = true;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
      absl::Status s = Errno("stat " + path);
      close(fd);
      return s;
    }
    id = IdOf(sb);
    if (cache.valid && cache.id == id) {
      close(fd);
      st = std::move(cache.st);
      idx = std::move(cache.index);
    } else {
      absl::StatusOr<std::string> data = ReadAll(fd, path);
      close(fd);
      if (!data.ok()) return data.status();
      st = json::parse(*data, nullptr, false);
      if (st.is_discarded() || !st.is_object()) {
        cache.valid = false;
        cache.st = json();
        return absl::DataLossError("fake hypervisor state.json is corrupt in " + dir_);
      }
      for (const char* k : {"hosts", "transfers"}) {
        if (!st[k].is_object()) st[k] = json::object();
      }
      idx = BuildIndex(st);
    }
    cache.valid = false;
  }

  const int64_t now = NowMs(clock_);
  bool changed = AdvanceTransfers(st, idx, now);
  changed = PruneTransfers(st, idx, now) || changed;
  RETURN_IF_ERROR(FlushJournal(dir_, st));
  absl::Status s;
  bool keep = true;
  if (mutate != nullptr) {
    s = (*mutate)(st, &changed, idx);
    // fn may have modified the state without saying so: such a change must not outlive this
    // call (it was never written). When something else changed, all of it is written.
    if (!changed) keep = false;
    if (changed) idx = BuildIndex(st);  // fn may have changed transfers
  } else {
    s = (*read)(st, idx);
  }
  RETURN_IF_ERROR(FlushJournal(dir_, st));
  if (changed) {
    ASSIGN_OR_RETURN(id, WriteState(dir_, st, have_file ? &id : nullptr));
    have_file = true;
  }
  if (keep && have_file && id.ino != 0) {
    cache.st = std::move(st);
    cache.index = std::move(idx);
    cache.id = id;
    cache.valid = true;
  }
  return s;
}

absl::Status FakeHypervisor::Mutate(const std::function<absl::Status(json&, bool*)>& fn) {
  const MutateFn f = [&](json& st, bool* changed, const internal::FakeStateIndex&) {
    return fn(st, changed);
  };
  return Transact(&f, nullptr);
}

absl::Status FakeHypervisor::Read(const std::function<absl::Status(const json&)>& fn) {
  const ReadFn f = [&](const json& st, const internal::FakeStateIndex&) { return fn(st); };
  return Transact(nullptr, &f);
}

absl::Status FakeHypervisor::CreateDomain(const std::string& host, const std::string& uuid,
                                          const std::string& name, uint64_t memory_mib,
                                          const std::string& state,
                                          std::vector<std::string> bridges,
                                          const std::string& kind) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  if (kind != "" && kind != "pv" && kind != "pvh" && kind != "hvm") {
    return absl::InvalidArgumentError(
        absl::StrCat("guest kind '", kind, "' is not one of pv, pvh, hvm (or empty: pv)"));
  }
  return Mutate([&](json& st, bool* changed) -> absl::Status {
    if (!st["hosts"].contains(host)) {
      return absl::NotFoundError(absl::StrCat("fake host ", host, " is not registered"));
    }
    for (auto& [h, hj] : st["hosts"].items()) {
      if (hj["domains"].contains(uuid)) {
        return absl::AlreadyExistsError(absl::StrCat("domain ", uuid, " already exists on ", h));
      }
    }
    st["hosts"][host]["domains"][uuid] = {{"name", name},
                                          {"state", state},
                                          {"memory_mib", memory_mib},
                                          {"vcpus", 1},
                                          {"persistent", true},
                                          {"bridges", bridges},
                                          {"kind", kind.empty() ? "pv" : kind}};
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeHypervisor::SetFailure(const std::string& host, const std::string& step,
                                        const std::string& message, int times,
                                        absl::StatusCode code, v1::ErrorReason reason) {
  return Mutate([&](json& st, bool* changed) -> absl::Status {
    if (!st["hosts"].contains(host)) {
      return absl::NotFoundError(absl::StrCat("fake host ", host, " is not registered"));
    }
    if (step == "transfer") {
      st["hosts"][host]["fail_transfer"] = message;
    } else {
      st["hosts"][host]["failures"][step] = {{"message", message},
                                             {"remaining", times},
                                             {"code", static_cast<int>(code)},
                                             {"reason", static_cast<int>(reason)}};
    }
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeHypervisor::SetTransferDuration(const std::string& host, absl::Duration d) {
  return Mutate([&](json& st, bool* changed) -> absl::Status {
    if (!st["hosts"].contains(host)) {
      return absl::NotFoundError(absl::StrCat("fake host ", host, " is not registered"));
    }
    st["hosts"][host]["transfer_duration_ms"] = absl::ToInt64Milliseconds(d);
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeHypervisor::SetTransferDowntime(const std::string& host, absl::Duration d) {
  return Mutate([&](json& st, bool* changed) -> absl::Status {
    if (!st["hosts"].contains(host)) {
      return absl::NotFoundError(absl::StrCat("fake host ", host, " is not registered"));
    }
    st["hosts"][host]["transfer_downtime_ms"] = absl::ToInt64Milliseconds(d);
    *changed = true;
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> FakeHypervisor::Locate(
    const std::string& uuid) {
  std::vector<std::pair<std::string, std::string>> out;
  RETURN_IF_ERROR(Read([&](const json& st) -> absl::Status {
    for (const auto& [h, hj] : Get(st, "hosts").items()) {
      const json& d = Get(Get(hj, "domains"), uuid);
      if (!d.is_null()) out.emplace_back(h, d.value("state", std::string()));
    }
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<json> FakeHypervisor::Snapshot() {
  json copy;
  RETURN_IF_ERROR(Read([&](const json& st) -> absl::Status {
    copy = st;
    return absl::OkStatus();
  }));
  return copy;
}

absl::StatusOr<std::vector<FakeHypervisor::JournalEntry>> FakeHypervisor::Journal() {
  std::vector<std::string> lines;
  RETURN_IF_ERROR(Read([&](const json&) -> absl::Status {
    std::ifstream in(dir_ + "/journal.jsonl");
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
    return absl::OkStatus();
  }));
  std::vector<JournalEntry> out;
  for (const auto& line : lines) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    JournalEntry e;
    e.host = j.value("host", std::string());
    e.step = j.value("step", std::string());
    e.migration_id = j.value("migration_id", std::string());
    e.time = absl::FromUnixMillis(j.value("ms", int64_t{0}));
    e.automatic = j.value("auto", false);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace livemig::driver
