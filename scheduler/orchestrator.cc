#include "scheduler/orchestrator.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "scheduler/convert.h"
#include "scheduler/migration_run.h"
#include "scheduler/step_requests.h"

namespace livemig::sched {

using S = MigrationStatus;

// ---- Orchestrator ----------------------------------------------------------------------------

Orchestrator::Orchestrator(OrchestratorOptions options, db::MigrationStore* migrations,
                           db::HostStore* hosts, db::InstanceStore* instances,
                           AgentClientFactory* agents)
    : options_(std::move(options)),
      migrations_(migrations),
      hosts_(hosts),
      instances_(instances),
      agents_(agents) {
  if (options_.scheduler_id.empty()) {
    char host[128] = {0};
    gethostname(host, sizeof(host) - 1);
    std::random_device rd;
    options_.scheduler_id = absl::StrCat("scheduler-", host, "-", getpid(), "-", rd() % 100000);
  }
}

Orchestrator::~Orchestrator() { Stop(); }

void Orchestrator::Start() {
  dispatcher_ = std::thread([this] { DispatchLoop(); });
  renewer_ = std::thread([this] { RenewLoop(); });
  if (options_.metrics_fold_interval > absl::ZeroDuration()) {
    folder_ = std::thread([this] { FoldLoop(); });
  }
  started_ = true;
}

void Orchestrator::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  {
    absl::MutexLock l(&sleep_mu_);
    stopping_ = true;  // ends the state machines' waits
  }
  Kick();
  if (dispatcher_.joinable()) dispatcher_.join();
  if (renewer_.joinable()) renewer_.join();
  if (folder_.joinable()) folder_.join();
  absl::MutexLock l(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_.empty(); };
  mu_.Await(absl::Condition(&idle));
}

void Orchestrator::SleepUnlessStopping(absl::Duration d) {
  absl::MutexLock l(&sleep_mu_);
  options_.clock->AwaitWithTimeout(&sleep_mu_, absl::Condition(&stopping_), d);
}

void Orchestrator::Kick() {
  absl::MutexLock l(&mu_);
  kicked_ = true;
  kick_.Signal();
}

void Orchestrator::MigrationEnded() {
  absl::MutexLock l(&ended_mu_);
  ++ended_;
}

int64_t Orchestrator::MigrationsEnded() {
  absl::MutexLock l(&ended_mu_);
  return ended_;
}

void Orchestrator::AwaitMigrationsEnded(int64_t seen, absl::Duration timeout) {
  absl::MutexLock l(&ended_mu_);
  auto beyond = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ended_mu_) { return ended_ > seen; };
  ended_mu_.AwaitWithTimeout(absl::Condition(&beyond), timeout);
}

void Orchestrator::Launch(const db::MigrationRecord& created,
                          std::optional<db::InstanceRecord> instance) {
  if (started_) {
    absl::MutexLock l(&mu_);
    if (!Stopping()) {
      if (running_.insert(created.id).second) {
        std::thread([this, created, instance = std::move(instance)]() mutable {
          RunMigration(created.id, std::move(created), std::move(instance));
        }).detach();
      }
      return;
    }
  }
  Kick();
}

int Orchestrator::RunningStateMachines() {
  absl::MutexLock l(&mu_);
  return static_cast<int>(running_.size());
}

void Orchestrator::RunMigration(int64_t id, std::optional<db::MigrationRecord> created,
                                std::optional<db::InstanceRecord> instance) {
  MigrationRun run(this, id);
  if (created) run.Seed(*std::move(created), std::move(instance));
  run.Drive();
  absl::MutexLock l(&mu_);
  running_.erase(id);
}

void Orchestrator::DispatchLoop() {
  std::map<int64_t, absl::Time> error_attempts;  // on the injected clock
  while (!Stopping()) {
    {
      absl::MutexLock l(&mu_);
      if (!kicked_) kick_.WaitWithTimeout(&mu_, options_.dispatch_interval);
      kicked_ = false;
    }
    if (Stopping()) break;
    // Take over migrations whose owner's lease expired.
    auto orphans = migrations_->ListOrphaned();
    if (orphans.ok()) {
      for (const auto& m : *orphans) {
        auto got = migrations_->AcquireLease(m.id, options_.scheduler_id, options_.lease);
        if (got.ok() && *got) {
          LogInfo("migration=%d instance=%s taken over from '%s' (%s)", m.id, m.instance_uuid,
                  m.owner, ToString(m.status));
        }
      }
    }
    auto active = migrations_->ListActiveMigrations();
    if (!active.ok()) {
      LogWarning("dispatcher: %s", active.status().message());
      continue;
    }
    for (const auto& m : *active) {
      if (m.owner != options_.scheduler_id) continue;
      if (m.status == MigrationStatus::kError) {
        auto& last = error_attempts[m.id];
        const absl::Time now = options_.clock->Now();
        if (now - last < absl::Seconds(30)) continue;  // a migration in error: every 30 s
        last = now;
      }
      absl::MutexLock l(&mu_);
      if (running_.count(m.id)) continue;
      running_.insert(m.id);
      std::thread([this, id = m.id] { RunMigration(id); }).detach();
    }
  }
}

void Orchestrator::RenewLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.lease / 3)) {
    auto n = migrations_->RenewLeases(options_.scheduler_id, options_.lease);
    if (!n.ok()) LogWarning("lease renewal failed: %s", n.status().message());
  }
}

// Off the API's path: a scrape of /metrics only reads (MigrationStore::ReadMetrics). Every
// replica folds; the store lets one at a time through and the others skip.
void Orchestrator::FoldLoop() {
  do {
    auto n = migrations_->FoldMetrics();
    if (!n.ok()) {
      LogWarning("metrics fold failed (retried in %s): %s",
                 absl::FormatDuration(options_.metrics_fold_interval), n.status().message());
    }
  } while (!stop_.WaitForNotificationWithTimeout(options_.metrics_fold_interval));
}

absl::StatusOr<std::vector<Orchestrator::DomainWhere>> Orchestrator::DescribeDomainOnHosts(
    const db::MigrationRecord& m) {
  std::vector<std::string> names = {m.source_host};
  if (!m.dest_host.empty()) names.push_back(m.dest_host);
  std::vector<DomainWhere> out;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(db::HostRecord h, hosts_->GetHost(name, options_.service_down_time));
    auto agent = agents_->ForHost(name, h.report.agent_address);
    const cv1::DescribeInstanceRequest di = DescribeRequest(m.instance_uuid, m.uuid);
    auto r = RetryAgentCall<cv1::DescribeInstanceResponse>(
        absl::StrCat("migration=", m.id, " where is the domain"),
        [&] { return agent->DescribeInstance(di); });
    if (!r.ok()) {
      return absl::UnavailableError(absl::StrCat("the agent of ", name,
                                                 " cannot say whether instance ", m.instance_uuid,
                                                 " runs there: ", r.status().message()));
    }
    DomainWhere w;
    w.host = name;
    w.present = r->present();
    w.runs = DomainRuns(*r);
    w.state = r->present() ? DomainStateName(r->domain().state()) : "no domain";
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace livemig::sched
