#include "scheduler/agent_client.h"

#include <algorithm>
#include <atomic>
#include <functional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_map.h"
#include "compute/agent_core.h"

namespace livemig::sched {

class GrpcAgentClient : public AgentClient {
 public:
  GrpcAgentClient(std::string hostname, std::unique_ptr<cv1::ComputeAgent::Stub> stub,
                  absl::Duration deadline, Clock* clock)
      : hostname_(std::move(hostname)), stub_(std::move(stub)), deadline_(deadline), clock_(clock) {
    Touch();
  }

  // Last used: handed out by the factory, or a call started or ended.
  void Touch() { last_used_ns_ = absl::ToUnixNanos(clock_->Now()); }
  absl::Time last_used() const { return absl::FromUnixNanos(last_used_ns_.load()); }

#define LIVEMIG_GRPC_RPC(Name, Req, Resp, step)                       \
  absl::StatusOr<Resp> Name(const Req& r) override {                  \
    return Call<Req, Resp>(#Name, r, &cv1::ComputeAgent::Stub::Name); \
  }
  LIVEMIG_AGENT_RPCS(LIVEMIG_GRPC_RPC)
#undef LIVEMIG_GRPC_RPC

  absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override {
    return Call<cv1::GetHostInfoRequest, cv1::GetHostInfoResponse>(
        "GetHostInfo", cv1::GetHostInfoRequest(), &cv1::ComputeAgent::Stub::GetHostInfo);
  }

 private:
  template <typename Req, typename Resp>
  using Method = grpc::Status (cv1::ComputeAgent::Stub::*)(grpc::ClientContext*, const Req&, Resp*);

  // One attempt, by the per-call deadline or the thread's ScopedAgentDeadline, whichever comes
  // first. Retries are the caller's (common/retry.h: one layer, the orchestrator's).
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(const char* name, const Req& req, Method<Req, Resp> method) {
    Touch();
    absl::Cleanup touch = [this] { Touch(); };
    grpc::ClientContext ctx;
    ctx.set_deadline(
        absl::ToChronoTime(std::min(absl::Now() + deadline_, ScopedAgentDeadline::Current())));
    Resp resp;
    grpc::Status s = (stub_.get()->*method)(&ctx, req, &resp);
    if (s.ok()) return resp;
    return FromGrpcStatus(s, absl::StrCat(name, " on ", hostname_));
  }

  const std::string hostname_;
  std::unique_ptr<cv1::ComputeAgent::Stub> stub_;
  const absl::Duration deadline_;
  Clock* const clock_;
  std::atomic<int64_t> last_used_ns_{0};
};

namespace {

class LocalAgentClient : public AgentClient {
 public:
  explicit LocalAgentClient(agent::AgentCore* core) : core_(core) {}
  absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override { return core_->GetHostInfo(); }
#define LIVEMIG_LOCAL_RPC(Name, Req, Resp, step) \
  absl::StatusOr<Resp> Name(const Req& r) override { return core_->Name(r); }
  LIVEMIG_AGENT_RPCS(LIVEMIG_LOCAL_RPC)
#undef LIVEMIG_LOCAL_RPC

 private:
  agent::AgentCore* core_;
};

// Answers every call with Unavailable (an unknown host).
class UnreachableAgentClient : public AgentClient {
 public:
  explicit UnreachableAgentClient(std::string why) : why_(std::move(why)) {}
  absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override { return Err(); }
#define LIVEMIG_NO_RPC(Name, Req, Resp, step) \
  absl::StatusOr<Resp> Name(const Req&) override { return Err(); }
  LIVEMIG_AGENT_RPCS(LIVEMIG_NO_RPC)
#undef LIVEMIG_NO_RPC

 private:
  absl::Status Err() const { return absl::UnavailableError(why_); }
  std::string why_;
};

// ---- replay (tests only) -------------------------------------------------------------------

// A transfer report without the fields that legitimately change between two deliveries.
cv1::MigrationProgressReport Stable(cv1::MigrationProgressReport r) {
  r.clear_progress();
  r.clear_current_max_downtime_ms();
  r.clear_monitor_attached();
  r.clear_finished_at();
  return r;
}

// Whether `later` may follow `first` for the same transfer.
bool SameReport(const cv1::MigrationProgressReport& first,
                const cv1::MigrationProgressReport& later, std::string* why) {
  if (first.state() != later.state()) {
    // The transfer moved on between the deliveries: only its identity must agree.
    if (first.state() == cv1::TRANSFER_STATE_RUNNING &&
        first.migration_id() == later.migration_id() &&
        first.instance_uuid() == later.instance_uuid()) {
      return true;
    }
    *why = absl::StrCat("transfer state ", cv1::TransferState_Name(first.state()), " then ",
                        cv1::TransferState_Name(later.state()));
    return false;
  }
  if (Stable(first).SerializeAsString() != Stable(later).SerializeAsString()) {
    *why = "different transfer reports";
    return false;
  }
  return true;
}

template <typename Resp>
bool SameOk(const Resp& a, const Resp& b, std::string* why) {
  if (a.SerializeAsString() == b.SerializeAsString()) return true;
  *why = "different answers";
  return false;
}
bool SameOk(const cv1::LiveMigrationResponse& a, const cv1::LiveMigrationResponse& b,
            std::string* why) {
  if (a.attached() && !b.attached()) {
    *why = "the first delivery attached, a later one started a transfer";
    return false;
  }
  return SameReport(a.report(), b.report(), why);
}
bool SameOk(const cv1::AbortLiveMigrationResponse& a, const cv1::AbortLiveMigrationResponse& b,
            std::string* why) {
  return SameReport(a.report(), b.report(), why);
}
bool SameOk(const cv1::ForceCompleteLiveMigrationResponse& a,
            const cv1::ForceCompleteLiveMigrationResponse& b, std::string* why) {
  return SameReport(a.report(), b.report(), why);
}

template <typename Resp>
bool SameAnswer(const absl::StatusOr<Resp>& a, const absl::StatusOr<Resp>& b, std::string* why) {
  if (a.ok() != b.ok()) {
    *why = a.ok() ? "OK then an error" : "an error then OK";
    return false;
  }
  if (!a.ok()) {
    if (a.status().code() == b.status().code() && a.status().message() == b.status().message()) {
      return true;
    }
    *why = "different errors";
    return false;
  }
  return SameOk(*a, *b, why);
}

template <typename Resp>
std::string Show(const absl::StatusOr<Resp>& r) {
  return r.ok() ? absl::StrCat("OK {", r->ShortDebugString(), "}") : r.status().ToString();
}

class ReplayingAgentClient : public AgentClient {
 public:
  ReplayingAgentClient(std::string hostname, std::shared_ptr<AgentClient> inner, int times,
                       std::shared_ptr<ReplayingAgentClientFactory::Counters> counters)
      : hostname_(std::move(hostname)),
        inner_(std::move(inner)),
        times_(times),
        counters_(std::move(counters)) {}

  absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override { return inner_->GetHostInfo(); }
  // The steps are delivered `times_` times (LIVEMIG_REPLAY_RPC_true), the reads once
  // (LIVEMIG_REPLAY_RPC_false): `step` of LIVEMIG_AGENT_RPCS picks the macro.
#define LIVEMIG_REPLAY_RPC(Name, Req, Resp, step) LIVEMIG_REPLAY_RPC_##step(Name, Req, Resp)
#define LIVEMIG_REPLAY_RPC_true(Name, Req, Resp)                                   \
  absl::StatusOr<Resp> Name(const Req& r) override {                               \
    return Replay<Resp>(#Name, r.migration_id(), [&] { return inner_->Name(r); }); \
  }
#define LIVEMIG_REPLAY_RPC_false(Name, Req, Resp) \
  absl::StatusOr<Resp> Name(const Req& r) override { return inner_->Name(r); }
  LIVEMIG_AGENT_RPCS(LIVEMIG_REPLAY_RPC)
#undef LIVEMIG_REPLAY_RPC_false
#undef LIVEMIG_REPLAY_RPC_true
#undef LIVEMIG_REPLAY_RPC

 private:
  template <typename Resp>
  absl::StatusOr<Resp> Replay(const char* name, const std::string& migration_id,
                              const std::function<absl::StatusOr<Resp>()>& call) {
    const absl::StatusOr<Resp> first = call();
    absl::StatusOr<Resp> last = first;
    int different = 0;
    for (int i = 2; i <= times_; ++i) {
      absl::StatusOr<Resp> again = call();
      std::string why;
      if (!SameAnswer(first, again, &why)) {
        ++different;
        LogWarning(
            "replay: %s of migration=%s on %s: delivery %d of %d answered differently (%s): "
            "first %s, now %s",
            name, migration_id, hostname_, i, times_, why, Show(first), Show(again));
      }
      last = std::move(again);
    }
    ReplayingAgentClientFactory::Stats now;
    {
      absl::MutexLock l(&counters_->mu);
      counters_->stats.steps += 1;
      counters_->stats.different += different;
      now = counters_->stats;
    }
    LogInfo(
        "replay: %d steps delivered %d times, %d different answers (last: %s of migration=%s "
        "on %s)",
        now.steps, times_, now.different, name, migration_id, hostname_);
    return last;
  }

  const std::string hostname_;
  std::shared_ptr<AgentClient> inner_;
  const int times_;
  std::shared_ptr<ReplayingAgentClientFactory::Counters> counters_;
};

thread_local absl::Time agent_deadline = absl::InfiniteFuture();

}  // namespace

ScopedAgentDeadline::ScopedAgentDeadline(absl::Time deadline) : previous_(agent_deadline) {
  agent_deadline = std::min(agent_deadline, deadline);
}

ScopedAgentDeadline::~ScopedAgentDeadline() { agent_deadline = previous_; }

absl::Time ScopedAgentDeadline::Current() { return agent_deadline; }

ReplayingAgentClientFactory::ReplayingAgentClientFactory(AgentClientFactory* inner, int times)
    : inner_(inner), times_(times < 1 ? 1 : times) {}

std::shared_ptr<AgentClient> ReplayingAgentClientFactory::ForHost(const std::string& hostname,
                                                                  const std::string& address) {
  return std::make_shared<ReplayingAgentClient>(hostname, inner_->ForHost(hostname, address),
                                                times_, counters_);
}

ReplayingAgentClientFactory::Stats ReplayingAgentClientFactory::stats() {
  absl::MutexLock l(&counters_->mu);
  return counters_->stats;
}

GrpcAgentClientFactory::GrpcAgentClientFactory(Options options) : options_(std::move(options)) {}

GrpcAgentClientFactory::~GrpcAgentClientFactory() = default;

std::shared_ptr<AgentClient> GrpcAgentClientFactory::ForHost(const std::string& hostname,
                                                             const std::string& address) {
  absl::MutexLock l(&mu_);
  EvictLocked(options_.clock->Now());
  const std::string key = hostname + "|" + address;
  auto it = clients_.find(key);
  if (it != clients_.end()) {
    it->second->Touch();
    return it->second;
  }
  if (!creds_) {
    auto creds = MakeChannelCredentials(options_.tls);
    if (!creds.ok()) {
      return std::make_shared<UnreachableAgentClient>(std::string(creds.status().message()));
    }
    creds_ = *std::move(creds);
  }
  // The agent's certificate names its host.
  auto channel = grpc::CreateCustomChannel(address, creds_, ClientChannelArgs(hostname));
  auto client = std::make_shared<GrpcAgentClient>(hostname, cv1::ComputeAgent::NewStub(channel),
                                                  options_.deadline, options_.clock);
  clients_[key] = client;
  EvictLocked(options_.clock->Now());  // beyond max_channels: the least recently used goes
  return client;
}

void GrpcAgentClientFactory::EvictLocked(absl::Time now) {
  for (auto it = clients_.begin(); it != clients_.end();) {
    const absl::Duration idle = now - it->second->last_used();
    if (idle > options_.channel_idle) {
      LogInfo("agent channel %s closed: unused for %s", it->first, absl::FormatDuration(idle));
      it = clients_.erase(it);
    } else {
      ++it;
    }
  }
  while (clients_.size() > options_.max_channels) {
    auto lru = clients_.begin();
    for (auto it = clients_.begin(); it != clients_.end(); ++it) {
      if (it->second->last_used() < lru->second->last_used()) lru = it;
    }
    LogInfo("agent channel %s closed: the least recently used of more than %d", lru->first,
            options_.max_channels);
    clients_.erase(lru);
  }
}

size_t GrpcAgentClientFactory::CachedChannels() {
  absl::MutexLock l(&mu_);
  return clients_.size();
}

bool GrpcAgentClientFactory::IsCached(const std::string& hostname, const std::string& address) {
  absl::MutexLock l(&mu_);
  return clients_.count(hostname + "|" + address) > 0;
}

void LocalAgentClientFactory::Add(const std::string& hostname, agent::AgentCore* core) {
  absl::MutexLock l(&mu_);
  cores_[hostname] = core;
}

std::shared_ptr<AgentClient> LocalAgentClientFactory::ForHost(const std::string& hostname,
                                                              const std::string&) {
  absl::MutexLock l(&mu_);
  auto it = cores_.find(hostname);
  if (it == cores_.end()) {
    return std::make_shared<UnreachableAgentClient>("no agent for host " + hostname);
  }
  return std::make_shared<LocalAgentClient>(it->second);
}

}  // namespace livemig::sched
