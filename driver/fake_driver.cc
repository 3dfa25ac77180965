#include "driver/fake_driver.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/retention.h"
#include "common/status_macros.h"
#include "common/status_map.h"
#include "driver/checks.h"

namespace livemig::driver {

using json = nlohmann::json;

namespace internal {

// What a process derives from the state when it parses it, kept up to date with it: running
// transfers are found without scanning the finished ones, and pruning is due only when the
// finished ones exceed a limit.
struct FakeStateIndex {
  std::map<std::string, std::string> running;  // migration id -> domain uuid, state "running"
  // The transfers in any other state, by when they finished.
  FinishedRetention<std::string> finished{
      {FakeHypervisor::kFinishedTransferKeep, FakeHypervisor::kMaxFinishedTransfers}};
};

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

constexpr uint64_t kMiB = 1ull << 20;

// Domain-0 on Xen: libvirt lists it with domain id 0 and this UUID (fake-libxl hosts have one).
constexpr char kDomain0Uuid[] = "00000000-0000-0000-0000-000000000000";

int64_t NowMs(Clock* c) { return absl::ToUnixMillis(c->Now()); }

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

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

// Read-only member access: a null value when `j` is not an object or lacks `key`.
const json& Get(const json& j, const std::string& key) {
  static const json* const kNull = new json();
  if (!j.is_object()) return *kNull;
  auto it = j.find(key);
  return it == j.end() ? *kNull : *it;
}

// A stored domain state as the hypervisor shows it. "incoming" is the destination's domain of a
// running transfer: QEMU pauses it with reason "migration", Xen's libxl with reason "user".
v1::DomainState StateOf(const std::string& s, bool libxl) {
  if (s == "running") return v1::DOMAIN_STATE_RUNNING;
  if (s == "paused") return v1::DOMAIN_STATE_PAUSED;
  if (s == "shutoff") return v1::DOMAIN_STATE_SHUTOFF;
  if (s == "incoming") return libxl ? v1::DOMAIN_STATE_PAUSED : v1::DOMAIN_STATE_INCOMING_PAUSED;
  return v1::DOMAIN_STATE_UNSPECIFIED;
}

std::string ReasonOf(const std::string& s, bool libxl) {
  if (s == "paused") return "user";
  if (s == "incoming") return libxl ? "user" : "migration";
  return "";
}

// Domain-0 is the host's control domain, listed by the hypervisor but never an instance.
bool IsDomain0(const std::string& uuid, const json& d) {
  return uuid == kDomain0Uuid || Get(d, "domid") == 0;
}

absl::Status RefuseDomain0(const std::string& uuid) {
  if (uuid != kDomain0Uuid) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("instance uuid ", uuid,
                   " is Domain-0, the host's control domain: not an instance, it cannot migrate"));
}

// Journals a driver action (see FakeHypervisor::Journal): queued in the state under the lock,
// then appended to <state_dir>/journal.jsonl by FlushJournal (an append-only file, so that a
// long benchmark does not make state.json grow).
void Journal(json& st, const std::string& host, const std::string& step, const std::string& id,
             int64_t ms, bool automatic = false) {
  st["journal_pending"].push_back(
      {{"host", host}, {"step", step}, {"migration_id", id}, {"ms", ms}, {"auto", automatic}});
}

absl::Status FlushJournal(const std::string& dir, json& st) {
  if (!st.contains("journal_pending")) return absl::OkStatus();
  std::ofstream out(dir + "/journal.jsonl", std::ios::app);
  for (const auto& e : st["journal_pending"]) out << e.dump() << "\n";
  st.erase("journal_pending");
  if (!out) return Errno("append " + dir + "/journal.jsonl");
  return absl::OkStatus();
}

bool IsRunning(const json& t) { return Get(t, "state") == "running"; }

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

// Consumes one injected failure of `step` on `host`, if any.
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

std::string DomainXml(const std::string& uuid, const json& d) {
  return absl::StrCat("<domain type='fake'><name>", d.value("name", std::string()), "</name><uuid>",
                      uuid, "</uuid><memory unit='MiB'>", d.value("memory_mib", 0ull),
                      "</memory></domain>");
}

}  // namespace

// ---- FakeHypervisor -----------------------------------------------------------------------

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

// ---- FakeDriver ---------------------------------------------------------------------------

v1::BackendCapabilities FakeDriver::ProfileCapabilities(const std::string& profile) {
  v1::BackendCapabilities c;
  c.set_profile(profile);
  c.set_supports_live(true);
  c.set_supports_offline(true);
  c.set_supports_peer_to_peer(true);
  c.set_supports_tunnelled(true);
  c.set_supports_compare_cpu(true);
  if (profile != "fake-libxl") {
    c.set_supports_abort(true);
    c.set_supports_force_complete(true);
    c.set_supports_post_copy(true);
    c.set_supports_bandwidth(true);
    c.set_supports_max_downtime(true);
    c.set_supports_job_stats_bytes(true);
    c.set_supports_block_migration(true);
    c.set_supports_auto_converge(true);
    c.set_supports_completion_timeout(true);
  }
  return c;
}

FakeDriver::FakeDriver(Options options)
    : options_(std::move(options)),
      caps_(ProfileCapabilities(options_.profile)),
      hv_(options_.state_dir, options_.clock) {
  if (Libxl()) {
    // As LibvirtDriver reads `xl info` on Xen: the configured virt_caps, or unknown.
    SetXenPagingCaps(options_.xen_virt_caps.empty()
                         ? absl::StatusOr<std::string>(absl::UnavailableError(
                               "the fake host has no virt_caps (--fake-xen-virt-caps is empty), "
                               "as if `xl info` had failed"))
                         : absl::StatusOr<std::string>("virt_caps : " + options_.xen_virt_caps),
                     &caps_);
  }
}

absl::StatusOr<std::unique_ptr<FakeDriver>> FakeDriver::Create(Options o) {
  if (o.state_dir.empty()) return absl::InvalidArgumentError("the fake driver needs a state_dir");
  if (o.profile != "fake-qemu" && o.profile != "fake-libxl") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown fake profile '", o.profile, "': use fake-qemu or fake-libxl"));
  }
  if (o.instance_path.empty()) o.instance_path = o.state_dir + "/instances";
  RETURN_IF_ERROR(MkdirP(o.instance_path));
  auto d = std::unique_ptr<FakeDriver>(new FakeDriver(o));
  RETURN_IF_ERROR(d->hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    json& h = st["hosts"][o.hostname];
    if (!h.contains("domains")) h["domains"] = json::object();
    if (!h.contains("staged")) h["staged"] = json::object();
    if (!h.contains("failures")) h["failures"] = json::object();
    h["hypervisor_type"] = o.hypervisor_type;
    h["hypervisor_version"] = o.hypervisor_version;
    h["memory_total_mib"] = o.memory_total_mib;
    h["instance_path"] = o.instance_path;
    // Xen's hypervisor lists its control domain (libvirt: id 0, the all-zero UUID); QEMU has none.
    if (o.profile == "fake-libxl") {
      h["domains"][kDomain0Uuid] = {{"name", "Domain-0"},
                                    {"state", "running"},
                                    {"memory_mib", o.dom0_memory_mib},
                                    {"vcpus", 1},
                                    {"persistent", true},
                                    {"domid", 0},
                                    {"bridges", json::array()}};
    } else {
      h["domains"].erase(kDomain0Uuid);
    }
    *changed = true;
    return absl::OkStatus();
  }));
  return d;
}

std::string FakeDriver::HypervisorName() const {
  return options_.profile == "fake-libxl" ? "Xen (libxl, fake)" : "QEMU (fake)";
}

v1::DomainInfo FakeDriver::DomainInfoOf(const std::string& uuid, const json& d, const json& st,
                                        const FakeStateIndex& idx) {
  const bool libxl = Libxl();
  v1::DomainInfo info;
  info.set_uuid(uuid);
  info.set_name(d.value("name", std::string()));
  const std::string state = d.value("state", std::string());
  info.set_state(StateOf(state, libxl));
  info.set_state_reason(ReasonOf(state, libxl));
  info.set_memory_mib(d.value("memory_mib", 0ull));
  info.set_max_memory_mib(d.value("memory_mib", 0ull));
  info.set_vcpus(d.value("vcpus", 1u));
  info.set_persistent(d.value("persistent", true));
  // Xen's guest kind (PV when the domain does not say); QEMU's domains have none.
  if (libxl) info.set_guest_kind(d.value("kind", std::string("pv")));
  // PCI devices passed through ("hostdevs": ["0000:03:00.0", ...]), as a test set them.
  if (d.contains("hostdevs") && d["hostdevs"].is_array()) {
    for (const auto& dev : d["hostdevs"]) {
      if (dev.is_string()) info.add_host_devices(dev.get<std::string>());
    }
  }
  for (const auto& b : d.value("bridges", json::array())) {
    auto* nic = info.add_interfaces();
    nic->set_bridge(b.get<std::string>());
    nic->set_model("e1000");
  }
  const int64_t now = NowMs(hv_.clock());
  for (const auto& [id, running_uuid] : idx.running) {  // the last one in id order, as ever
    if (running_uuid != uuid) continue;
    // A job of the transfer, on both of its hosts. QEMU names it a migration; libxl shows an
    // "unbounded" job of unknown operation, which this driver can call a migration only while it
    // runs the transfer's monitor itself (like LibvirtDriver on libxl).
    info.set_job_active(true);
    const json& start = Get(Get(Get(st, "transfers"), id), "start_ms");
    info.set_job_elapsed_ms(start.is_number() ? std::max<int64_t>(0, now - start.get<int64_t>())
                                              : 0);
    bool ours = !libxl;
    if (libxl) {
      std::lock_guard<std::mutex> l(monitoring_mu_);
      ours = monitoring_.count(id) > 0;
    }
    if (ours) {
      info.set_migration_job_active(true);
      info.set_migration_id(id);
    }
  }
  return info;
}

absl::StatusOr<v1::HostInventory> FakeDriver::GetHostInfo() {
  v1::HostInventory inv;
  RETURN_IF_ERROR(hv_.ReadIndexed([&](const json& st, const FakeStateIndex& idx) -> absl::Status {
    const json& h = Get(Get(st, "hosts"), options_.hostname);
    uint64_t used = 0;
    for (const auto& [uuid, d] : Get(h, "domains").items()) {
      used += d.value("memory_mib", 0ull);  // Domain-0's too: Xen's free memory excludes it
      if (!IsDomain0(uuid, d)) *inv.add_domains() = DomainInfoOf(uuid, d, st, idx);
    }
    inv.set_memory_free_mib(options_.memory_total_mib > used ? options_.memory_total_mib - used
                                                             : 0);
    return absl::OkStatus();
  }));
  inv.set_hostname(options_.hostname);
  inv.set_hypervisor_type(options_.hypervisor_type);
  inv.set_hypervisor_version(options_.hypervisor_version);
  inv.set_libvirt_version(options_.libvirt_version);
  inv.set_driver_uri("fake://" + options_.state_dir);
  inv.set_host_uuid(options_.hostname);
  auto* cpu = inv.mutable_cpu();
  cpu->set_arch(options_.cpu_arch);
  cpu->set_model(options_.cpu_model);
  for (const auto& f : options_.cpu_features) cpu->add_features(f);
  inv.set_memory_total_mib(options_.memory_total_mib);
  inv.set_memory_reserved_mib(options_.memory_reserved_mib);
  for (const auto& b : options_.bridges) {
    auto* n = inv.add_networks();
    n->set_name(b);
    n->set_segment(b);
    n->set_up(true);
  }
  inv.set_instance_path(options_.instance_path);
  *inv.mutable_capabilities() = caps_;
  return inv;
}

absl::StatusOr<std::vector<v1::DomainInfo>> FakeDriver::ListDomains() {
  ASSIGN_OR_RETURN(v1::HostInventory inv, GetHostInfo());
  return std::vector<v1::DomainInfo>(inv.domains().begin(), inv.domains().end());
}

absl::StatusOr<std::optional<v1::DomainInfo>> FakeDriver::DescribeDomain(const std::string& uuid) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  std::optional<v1::DomainInfo> out;
  RETURN_IF_ERROR(hv_.ReadIndexed([&](const json& st, const FakeStateIndex& idx) -> absl::Status {
    const json& d = Get(Get(Get(Get(st, "hosts"), options_.hostname), "domains"), uuid);
    if (!d.is_null() && !IsDomain0(uuid, d)) out = DomainInfoOf(uuid, d, st, idx);
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> FakeDriver::CheckCanLiveMigrateOnDest(
    const cv1::CheckCanLiveMigrateOnDestRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  ASSIGN_OR_RETURN(v1::HostInventory inv, GetHostInfo());
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) {
    Journal(st, options_.hostname, "check_can_live_migrate_on_dest", req.migration_id(),
            NowMs(hv_.clock()));
    return TakeFailure(st, options_.hostname, "check_can_live_migrate_on_dest", changed);
  }));
  return EvaluateDestChecks(req, DestFactsFrom(inv, options_.hostname, options_.bridges,
                                               options_.instance_path, caps_, req.migration_id()));
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> FakeDriver::CheckCanLiveMigrateOnSrc(
    const cv1::CheckCanLiveMigrateOnSrcRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  v1::DomainInfo dom;
  std::string xml;
  RETURN_IF_ERROR(hv_.MutateIndexed([&](json& st, bool* changed,
                                        const FakeStateIndex& idx) -> absl::Status {
    Journal(st, options_.hostname, "check_can_live_migrate_on_src", req.migration_id(),
            NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "check_can_live_migrate_on_src", changed));
    const json& doms = st["hosts"][options_.hostname]["domains"];
    if (!doms.contains(req.instance_uuid())) {
      return absl::NotFoundError(
          absl::StrCat("domain ", req.instance_uuid(), " is not on ", options_.hostname));
    }
    dom = DomainInfoOf(req.instance_uuid(), doms[req.instance_uuid()], st, idx);
    xml = DomainXml(req.instance_uuid(), doms[req.instance_uuid()]);
    return absl::OkStatus();
  }));
  return EvaluateSrcChecks(req, ProbeVisible(options_.instance_path, req.migration_id()), caps_,
                           HypervisorName(), dom, xml);
}

absl::Status FakeDriver::CheckCanLiveMigrateOnDestCleanup(
    const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "check_can_live_migrate_on_dest_cleanup", req.migration_id(),
            NowMs(hv_.clock()));
    return absl::OkStatus();
  }));
  RemoveProbe(options_.instance_path, req.migration_id());
  return absl::OkStatus();
}

absl::StatusOr<cv1::PreLiveMigrationData> FakeDriver::PreLiveMigration(
    const cv1::PreLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  cv1::PreLiveMigrationData data;
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "pre_live_migration", req.migration_id(), NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "pre_live_migration", changed));
    const auto& domain = req.migrate_data().src_check().domain();
    for (const auto& nic : domain.interfaces()) {
      bool have = false;
      for (const auto& b : options_.bridges) have = have || b == nic.bridge();
      if (!have) {
        return absl::FailedPreconditionError(absl::StrCat("cannot plug the instance's NIC: bridge ",
                                                          nic.bridge(), " is absent on ",
                                                          options_.hostname));
      }
      data.add_plugged_bridges(nic.bridge());
    }
    json& staged = st["hosts"][options_.hostname]["staged"];
    if (!staged.contains(req.migration_id())) {
      staged[req.migration_id()] = {{"uuid", req.instance_uuid()},
                                    {"xml", req.migrate_data().src_check().domain_xml()}};
      *changed = true;
    }
    data.set_dest_xml(staged[req.migration_id()]["xml"].get<std::string>());
    return absl::OkStatus();
  }));
  data.set_migration_uri("fake://" + options_.hostname);
  data.set_data_uri("fake-tcp://" + options_.hostname);
  data.set_dest_name(req.migrate_data().src_check().domain().name());
  return data;
}

absl::StatusOr<cv1::MigrationProgressReport> FakeDriver::Report(const std::string& id,
                                                                int64_t* end_ms) {
  cv1::MigrationProgressReport r;
  bool found = false;
  if (end_ms != nullptr) *end_ms = -1;
  RETURN_IF_ERROR(hv_.Read([&](const json& st) -> absl::Status {
    const json& t = Get(Get(st, "transfers"), id);
    if (t.is_null()) return absl::OkStatus();
    found = true;
    r.set_migration_id(id);
    r.set_instance_uuid(t["uuid"].get<std::string>());
    const std::string state = t["state"];
    r.set_state(state == "running"     ? cv1::TRANSFER_STATE_RUNNING
                : state == "completed" ? cv1::TRANSFER_STATE_COMPLETED
                : state == "cancelled" ? cv1::TRANSFER_STATE_CANCELLED
                                       : cv1::TRANSFER_STATE_FAILED);
    r.set_error(t.value("error", std::string()));
    r.set_post_copy_started(t.value("post_copy", false));
    r.set_completion_timeout_expired(t.value("timeout_expired", false));
    r.set_abort_requested(t.value("abort_requested", false));
    r.set_force_complete_requested(t.value("force_complete_requested", false));
    const int64_t start = t["start_ms"], dur = t["duration_ms"];
    if (end_ms != nullptr && state == "running") *end_ms = start + dur;
    const int64_t end = t.value("finished_ms", NowMs(hv_.clock()));
    const int64_t elapsed = std::max<int64_t>(0, end - start);
    auto* p = r.mutable_progress();
    p->set_phase(t.value("post_copy", false)    ? v1::MIGRATION_PHASE_POST_COPY
                 : t.value("paused_src", false) ? v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE
                 : t.value("live", true)        ? v1::MIGRATION_PHASE_PRE_COPY
                                                : v1::MIGRATION_PHASE_OFFLINE_COPY);
    p->set_elapsed_ms(elapsed);
    if (caps_.supports_job_stats_bytes()) {
      const uint64_t total = t.value("memory_mib", 0ull) * kMiB;
      const uint64_t done =
          state == "completed" || dur == 0
              ? total
              : std::min<uint64_t>(total, total * static_cast<uint64_t>(elapsed) / dur);
      p->set_has_bytes(true);
      p->set_bytes_total(total);
      p->set_bytes_processed(done);
      p->set_bytes_remaining(total - done);
      p->set_percent(total ? 100.0 * done / total : 100.0);
      // The measured downtime, once completed (QEMU reports it; libxl has no such counter).
      if (state == "completed") p->set_downtime_ms(t.value("downtime_ms", 0ull));
    }
    return absl::OkStatus();
  }));
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat("no transfer for migration ", id, " on ", options_.hostname));
  }
  return r;
}

absl::StatusOr<cv1::MigrationProgressReport> FakeDriver::LiveMigration(
    const cv1::LiveMigrationRequest& req, const ProgressSink& sink) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  const v1::MigrationOptions& o = req.options();
  const std::string& id = req.migration_id();
  bool attached = false;
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    if (st["transfers"].contains(id)) {
      attached = true;  // a restarted agent, or a repeated call: never a second transfer
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(CheckOptionsSupported(o, caps_, HypervisorName()));
    Journal(st, options_.hostname, "live_migration", id, NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "live_migration", changed));
    json& src = st["hosts"][options_.hostname];
    if (!src["domains"].contains(req.instance_uuid())) {
      return absl::NotFoundError(
          absl::StrCat("domain ", req.instance_uuid(), " is not on ", options_.hostname));
    }
    if (!st["hosts"].contains(req.dest_host()) || req.dest_host() == options_.hostname) {
      return absl::InvalidArgumentError(
          absl::StrCat("destination '", req.dest_host(), "' is not another fake host"));
    }
    json& dom = src["domains"][req.instance_uuid()];
    const std::string prior = dom.value("state", std::string("running"));
    if (prior != "running" && prior != "paused") {
      return absl::FailedPreconditionError(absl::StrCat("domain ", req.instance_uuid(), " is ",
                                                        prior,
                                                        ": only a running or paused domain "
                                                        "can migrate"));
    }
    json incoming = dom;
    incoming["state"] = "incoming";
    incoming["persistent"] = false;
    st["hosts"][req.dest_host()]["domains"][req.instance_uuid()] = incoming;
    json t = {{"uuid", req.instance_uuid()},
              {"src", options_.hostname},
              {"dst", req.dest_host()},
              {"start_ms", NowMs(hv_.clock())},
              {"duration_ms", src.value("transfer_duration_ms", 0ll)},
              {"downtime_ms", src.value("transfer_downtime_ms", 0ll)},
              {"state", "running"},
              {"memory_mib", dom.value("memory_mib", 0ull)},
              {"prior_state", prior},
              {"live", o.mode() != v1::MIGRATION_MODE_OFFLINE},
              {"allow_post_copy", o.allow_post_copy()}};
    if (src.contains("fail_transfer")) {
      t["fail_transfer"] = src["fail_transfer"];
      src.erase("fail_transfer");
    }
    if (o.mode() == v1::MIGRATION_MODE_OFFLINE) {
      dom["state"] = "paused";  // the guest is paused during an offline transfer
      t["paused_src"] = true;
    }
    st["transfers"][id] = t;
    *changed = true;
    return absl::OkStatus();
  }));
  (void)attached;
  // This object runs the transfer's monitor from here until it returns (see DomainInfoOf).
  struct Monitoring {
    FakeDriver* d;
    std::string id;
    Monitoring(FakeDriver* driver, const std::string& mid) : d(driver), id(mid) {
      std::lock_guard<std::mutex> l(d->monitoring_mu_);
      d->monitoring_.insert(id);
    }
    ~Monitoring() {
      std::lock_guard<std::mutex> l(d->monitoring_mu_);
      d->monitoring_.erase(id);
    }
  } monitoring(this, id);
  const absl::Time started = hv_.clock()->Now();
  const bool has_timeout = o.has_completion_timeout_s() && o.completion_timeout_s() > 0;
  while (true) {
    int64_t end_ms = -1;
    ASSIGN_OR_RETURN(cv1::MigrationProgressReport r, Report(id, &end_ms));
    r.set_monitor_attached(true);
    if (r.state() != cv1::TRANSFER_STATE_RUNNING) return r;
    if (sink) sink(r);
    if (has_timeout && !r.completion_timeout_expired() &&
        hv_.clock()->Now() - started > absl::Seconds(o.completion_timeout_s())) {
      RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
        json& t = st["transfers"][id];
        if (t["state"] != "running") return absl::OkStatus();
        t["timeout_expired"] = true;
        Journal(st, options_.hostname, "completion_timeout", id, NowMs(hv_.clock()),
                /*automatic=*/true);
        *changed = true;
        if (o.completion_action() == v1::COMPLETION_ACTION_FORCE_COMPLETE) {
          t["duration_ms"] = NowMs(hv_.clock()) - t["start_ms"].get<int64_t>();
          if (o.allow_post_copy())
            t["post_copy"] = true;
          else
            t["paused_src"] = true;
        } else {
          t["state"] = "failed";
          t["error"] = absl::StrCat("completion timeout of ", o.completion_timeout_s(),
                                    " s expired: transfer aborted");
          t["finished_ms"] = NowMs(hv_.clock());
          st["hosts"][t["dst"].get<std::string>()]["domains"].erase(t["uuid"].get<std::string>());
        }
        return absl::OkStatus();
      }));
      continue;
    }
    // Wake at the scheduled end (or the completion timeout) if it comes before the next poll.
    const absl::Time now = hv_.clock()->Now();
    absl::Duration wait = options_.poll_interval;
    if (end_ms >= 0) {
      wait = std::min(wait, std::max(absl::Milliseconds(1), absl::FromUnixMillis(end_ms) - now));
    }
    if (has_timeout && !r.completion_timeout_expired()) {
      const absl::Time expiry = started + absl::Seconds(o.completion_timeout_s());
      wait = std::min(wait, std::max(absl::Milliseconds(1), expiry - now + absl::Milliseconds(1)));
    }
    absl::SleepFor(wait);
  }
}

absl::StatusOr<cv1::MigrationProgressReport> FakeDriver::GetMigrationProgress(
    const std::string& migration_id, const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  (void)instance_uuid;
  return Report(migration_id);
}

absl::Status FakeDriver::AbortLiveMigration(const std::string& migration_id,
                                            const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  if (!caps_.supports_abort()) {
    return absl::FailedPreconditionError(
        absl::StrCat(HypervisorName(), " cannot abort a running migration: wait for it to finish"));
  }
  return hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "abort", migration_id, NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "abort", changed));
    if (!st["transfers"].contains(migration_id)) {
      return absl::NotFoundError(absl::StrCat("no transfer for migration ", migration_id));
    }
    json& t = st["transfers"][migration_id];
    if (t["state"] != "running") {
      return absl::FailedPreconditionError(absl::StrCat("the transfer of migration ", migration_id,
                                                        " already ended (",
                                                        t["state"].get<std::string>(), ")"));
    }
    if (t.value("post_copy", false)) {
      return absl::FailedPreconditionError(
          "post-copy has started: the destination holds the only complete copy; cannot abort");
    }
    t["state"] = "cancelled";
    t["abort_requested"] = true;
    t["error"] = "aborted";
    t["finished_ms"] = NowMs(hv_.clock());
    const std::string uuid = t["uuid"];
    st["hosts"][t["dst"].get<std::string>()]["domains"].erase(uuid);
    json& src = st["hosts"][t["src"].get<std::string>()];
    if (src["domains"].contains(uuid) && t.value("paused_src", false)) {
      src["domains"][uuid]["state"] = t.value("prior_state", std::string("running"));
    }
    (void)instance_uuid;
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeDriver::ForceCompleteLiveMigration(const std::string& migration_id,
                                                    const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  (void)instance_uuid;
  if (!caps_.supports_force_complete()) {
    return absl::FailedPreconditionError(
        absl::StrCat(HypervisorName(), " cannot force a running migration to complete"));
  }
  return hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "force_complete", migration_id, NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "force_complete", changed));
    if (!st["transfers"].contains(migration_id)) {
      return absl::NotFoundError(absl::StrCat("no transfer for migration ", migration_id));
    }
    json& t = st["transfers"][migration_id];
    if (t["state"] != "running") {
      return absl::FailedPreconditionError(
          absl::StrCat("the transfer of migration ", migration_id, " already ended"));
    }
    t["force_complete_requested"] = true;
    if (t.value("allow_post_copy", false)) {
      t["post_copy"] = true;
    } else {
      t["paused_src"] = true;
    }
    // Converges quickly now: a tenth of what is left, at most 100 ms.
    const int64_t now = NowMs(hv_.clock());
    const int64_t end = t["start_ms"].get<int64_t>() + t["duration_ms"].get<int64_t>();
    if (end > now + 100) t["duration_ms"] = now + 100 - t["start_ms"].get<int64_t>();
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeDriver::PostLiveMigration(const cv1::PostLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  return hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "post_live_migration", req.migration_id(), NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "post_live_migration", changed));
    json& doms = st["hosts"][options_.hostname]["domains"];
    if (doms.contains(req.instance_uuid())) {
      const std::string state = doms[req.instance_uuid()].value("state", std::string());
      if (state == "running" || state == "paused") {
        return absl::FailedPreconditionError(absl::StrCat(
            "domain ", req.instance_uuid(), " still runs on the source ", options_.hostname,
            ": the transfer has not completed; refusing to clean it up"));
      }
      doms.erase(req.instance_uuid());  // a leftover inactive definition
      *changed = true;
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::DomainInfo> FakeDriver::PostLiveMigrationAtDestination(
    const cv1::PostLiveMigrationAtDestinationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  v1::DomainInfo info;
  RETURN_IF_ERROR(
      hv_.MutateIndexed([&](json& st, bool* changed, const FakeStateIndex& idx) -> absl::Status {
        Journal(st, options_.hostname, "post_live_migration_at_destination", req.migration_id(),
                NowMs(hv_.clock()));
        RETURN_IF_ERROR(
            TakeFailure(st, options_.hostname, "post_live_migration_at_destination", changed));
        json& h = st["hosts"][options_.hostname];
        if (!h["domains"].contains(req.instance_uuid())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "domain ", req.instance_uuid(), " is not on the destination ", options_.hostname));
        }
        json& d = h["domains"][req.instance_uuid()];
        const std::string state = d.value("state", std::string());
        // libxl shows an incoming domain paused with reason "user", which this step accepts as a
        // guest paused before the migration (as LibvirtDriver does): it runs only after the
        // source's transfer completed.
        if (state != "running" && state != "paused" && !(Libxl() && state == "incoming")) {
          return absl::FailedPreconditionError(absl::StrCat("domain ", req.instance_uuid(), " is ",
                                                            state, " on ", options_.hostname,
                                                            ": the transfer has not completed"));
        }
        if (!d.value("persistent", false)) {
          d["persistent"] = true;
          *changed = true;
        }
        if (h["staged"].contains(req.migration_id())) {
          h["staged"].erase(req.migration_id());
          *changed = true;
        }
        info = DomainInfoOf(req.instance_uuid(), d, st, idx);
        return absl::OkStatus();
      }));
  RemoveProbe(options_.instance_path, req.migration_id());
  return info;
}

absl::StatusOr<v1::DomainInfo> FakeDriver::PauseInstance(const std::string& uuid) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  RETURN_IF_ERROR(RefuseDomain0(uuid));
  v1::DomainInfo info;
  RETURN_IF_ERROR(hv_.MutateIndexed([&](json& st, bool* changed,
                                        const FakeStateIndex& idx) -> absl::Status {
    json& doms = st["hosts"][options_.hostname]["domains"];
    if (!doms.contains(uuid)) {
      return absl::NotFoundError(absl::StrCat("domain ", uuid, " is not on ", options_.hostname));
    }
    json& d = doms[uuid];
    const std::string state = d.value("state", std::string());
    if (state == "shutoff") {
      return absl::FailedPreconditionError(absl::StrCat("domain ", uuid, " is shut off on ",
                                                        options_.hostname, ": nothing to pause"));
    }
    if (state != "paused") {
      d["state"] = "paused";
      *changed = true;
    }
    info = DomainInfoOf(uuid, d, st, idx);
    return absl::OkStatus();
  }));
  return info;
}

absl::Status FakeDriver::RollbackLiveMigrationAtDestination(
    const cv1::RollbackLiveMigrationAtDestinationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "rollback_live_migration_at_destination", req.migration_id(),
            NowMs(hv_.clock()));
    RETURN_IF_ERROR(
        TakeFailure(st, options_.hostname, "rollback_live_migration_at_destination", changed));
    json& h = st["hosts"][options_.hostname];
    if (h["domains"].contains(req.instance_uuid())) {
      const std::string state = h["domains"][req.instance_uuid()].value("state", std::string());
      // The rule of LibvirtDriver: a paused domain is destroyed when the hypervisor says it is
      // paused for an incoming migration (fake-qemu's "incoming"), or when the scheduler saw the
      // source holding the domain (libxl pauses an incoming domain with reason "user", so there
      // only that tells it from a paused guest). A running domain never.
      const bool paused = state == "incoming" || state == "paused";
      bool post_copy = false;  // the destination runs the guest: never destroyed
      for (const auto& [id, t] : st["transfers"].items()) {
        post_copy =
            post_copy || (IsRunning(t) && Get(t, "uuid") == req.instance_uuid() &&
                          Get(t, "dst") == options_.hostname && t.value("post_copy", false));
      }
      if (post_copy) {
        return WithReason(
            absl::FailedPreconditionError(absl::StrCat(
                "domain ", req.instance_uuid(), " is in post-copy on the destination ",
                options_.hostname, ": it is the only running copy; not destroying it")),
            v1::ERROR_REASON_ONLY_RUNNING_COPY);
      }
      const bool half_received =
          paused && ((state == "incoming" && !Libxl()) || req.source_runs_domain());
      if (!half_received) {
        return WithReason(
            absl::FailedPreconditionError(absl::StrCat(
                "domain ", req.instance_uuid(), " is ", paused ? "paused" : state,
                " on the destination ", options_.hostname,
                paused ? " (reason user) and the request does not say that the source still runs it"
                       : "",
                ": it may be the only running copy; not destroying it")),
            v1::ERROR_REASON_ONLY_RUNNING_COPY);
      }
      h["domains"].erase(req.instance_uuid());
      // Destroying the incoming domain breaks its transfer: it fails, the source keeps the VM.
      for (auto& [id, t] : st["transfers"].items()) {
        if (IsRunning(t) && Get(t, "uuid") == req.instance_uuid() &&
            Get(t, "dst") == options_.hostname) {
          t["state"] = "failed";
          t["error"] = absl::StrCat("the incoming domain on ", options_.hostname,
                                    " was destroyed (rollback at the destination)");
          t["finished_ms"] = NowMs(hv_.clock());
          json& src = st["hosts"][t["src"].get<std::string>()];
          if (src["domains"].contains(req.instance_uuid()) && t.value("paused_src", false)) {
            src["domains"][req.instance_uuid()]["state"] =
                t.value("prior_state", std::string("running"));
          }
        }
      }
      *changed = true;
    }
    if (h["staged"].contains(req.migration_id())) {
      h["staged"].erase(req.migration_id());
      *changed = true;
    }
    return absl::OkStatus();
  }));
  RemoveProbe(options_.instance_path, req.migration_id());
  return absl::OkStatus();
}

absl::StatusOr<v1::DomainInfo> FakeDriver::RollbackLiveMigration(
    const cv1::RollbackLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  v1::DomainInfo info;
  RETURN_IF_ERROR(
      hv_.MutateIndexed([&](json& st, bool* changed, const FakeStateIndex& idx) -> absl::Status {
        Journal(st, options_.hostname, "rollback_live_migration", req.migration_id(),
                NowMs(hv_.clock()));
        RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "rollback_live_migration", changed));
        json& doms = st["hosts"][options_.hostname]["domains"];
        if (!doms.contains(req.instance_uuid())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "domain ", req.instance_uuid(), " is not on the source ", options_.hostname,
              ": it cannot be rolled back here (check where it runs)"));
        }
        json& d = doms[req.instance_uuid()];
        const bool was_running = req.state_before_migration() != v1::DOMAIN_STATE_PAUSED;
        if (d.value("state", std::string()) == "paused" && was_running) {
          // As LibvirtDriver: never resumed while a transfer still works on it.
          for (const auto& [id, t] : st["transfers"].items()) {
            if (IsRunning(t) && Get(t, "uuid") == req.instance_uuid() &&
                Get(t, "src") == options_.hostname) {
              return absl::FailedPreconditionError(absl::StrCat(
                  "domain ", req.instance_uuid(), " is paused on the source ", options_.hostname,
                  " and transfer ", id, " still runs on it: not resuming it until it ends"));
            }
          }
          d["state"] = "running";
          *changed = true;
        }
        info = DomainInfoOf(req.instance_uuid(), d, st, idx);
        return absl::OkStatus();
      }));
  return info;
}

}  // namespace livemig::driver
