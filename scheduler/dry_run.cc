// The dry run (SchedulerApi.CheckMigration): every check a migration would make, including the
// agents' checks (steps 4-5) on the best candidates, with the same requests (step_requests.h),
// each agent call within its share of one deadline; changes nothing. Capped by
// max_concurrent_dry_runs.
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "scheduler/checks_registry.h"
#include "scheduler/convert.h"
#include "scheduler/orchestrator.h"
#include "scheduler/prechecks.h"
#include "scheduler/step_requests.h"

namespace livemig::sched {

Orchestrator::DryRunCounts Orchestrator::DryRuns() {
  absl::MutexLock l(&dry_mu_);
  return dry_;
}

absl::StatusOr<sv1::CheckMigrationResponse> Orchestrator::CheckMigration(
    const sv1::CheckMigrationRequest& req, db::HostStore* hosts_store,
    db::InstanceStore* instances_store) {
  {
    absl::MutexLock l(&dry_mu_);
    if (dry_.running >= options_.max_concurrent_dry_runs) {
      ++dry_.refused;
      const std::string msg = absl::StrCat(
          "dry run refused: ", dry_.running,
          " dry runs are running, the most allowed at once (--dry-run-max-concurrent ",
          options_.max_concurrent_dry_runs, "; each asks the agents for up to ",
          absl::FormatDuration(options_.dry_run_deadline), "): retry in a few seconds");
      // A warning on the first refusal and every 100th: a flood does not flood the log.
      if (dry_.refused == 1 || dry_.refused % 100 == 0) {
        LogWarning("%s (%d refused since start)", msg, dry_.refused);
      }
      return absl::ResourceExhaustedError(msg);
    }
    ++dry_.running;
    ++dry_.admitted;
    dry_.most_running = std::max(dry_.most_running, dry_.running);
  }
  absl::Cleanup done = [this] {
    absl::MutexLock l(&dry_mu_);
    --dry_.running;
  };
  return DryRun(req, hosts_store, instances_store);
}

absl::StatusOr<sv1::CheckMigrationResponse> Orchestrator::DryRun(
    const sv1::CheckMigrationRequest& req, db::HostStore* hosts_store,
    db::InstanceStore* instances_store) {
  db::HostStore* const hosts = hosts_store ? hosts_store : hosts_;
  db::InstanceStore* const instances = instances_store ? instances_store : instances_;
  ASSIGN_OR_RETURN(db::InstanceRecord inst, instances->GetInstance(req.instance_uuid()));
  if (inst.host.empty()) {
    return absl::FailedPreconditionError("instance " + inst.uuid + " has no known host");
  }
  ASSIGN_OR_RETURN(db::HostRecord src, hosts->GetHost(inst.host, options_.service_down_time));
  sv1::CheckMigrationResponse resp;
  resp.set_instance_uuid(inst.uuid);
  resp.set_source_host(inst.host);
  // The registry's instance checks (checks_registry.h), then the source's pre-checks.
  for (auto& c : RunChecks(kDryRun, CheckSubject::kInstance,
                           CheckContext{inst, &src, nullptr, req.options()})) {
    *resp.add_instance_checks() = std::move(c);
  }
  for (auto& c : CheckSource(inst, src, req.options())) *resp.add_instance_checks() = c;
  std::vector<sv1::HostCheck> checks;
  if (!req.destination().empty()) {
    ASSIGN_OR_RETURN(db::HostRecord dst,
                     hosts->GetHost(req.destination(), options_.service_down_time));
    checks.push_back(CheckDestination(inst, src, dst, req.options()));
  } else {
    ASSIGN_OR_RETURN(auto all, hosts->ListHosts(options_.service_down_time));
    checks = RankDestinations(inst, src, all, req.options());
  }
  // Agent checks (steps 4-5) as a migration makes them: on the best `destination_attempts` hosts
  // that passed the checks above, in rank order (the requested destination alone when given),
  // each with a throwaway id and dry_run set, so that the agents keep no record of it. All within
  // one overall deadline: each agent call may take an equal share of the time left for the calls
  // still to come (and at most the agent client's own deadline), so that agents that hang cost
  // the dry run its deadline at most, and each host checked says why it failed.
  const absl::Time end = absl::Now() + options_.dry_run_deadline;
  const int attempts = std::max(1, options_.destination_attempts);
  auto fail = [](sv1::HostCheck& hc, const std::string& host, const std::string& name,
                 const std::string& reason) {
    v1::CheckResult* c = hc.add_checks();
    c->set_host(host);
    c->set_name(name);
    c->set_reason(reason);
    hc.set_passed(false);
  };
  int to_check = 0;
  for (auto& hc : checks) {
    if (!hc.passed()) continue;
    if (to_check < attempts) {
      ++to_check;
      continue;
    }
    fail(hc, hc.host(), "agent_checks",
         absl::StrCat("not checked by the agents: a migration asks the agents of its best ",
                      attempts, " candidates only, and ", hc.host(), " ranks below them"));
  }
  // The source's DescribeInstance, then per host its check, the source's check, the cleanup.
  int calls_left = to_check == 0 ? 0 : 1 + 3 * to_check;
  // The deadline of the next agent call: its share of the time left.
  auto next_deadline = [&] {
    const absl::Time now = absl::Now();
    const absl::Time d = now + std::max(absl::ZeroDuration(), end - now) / std::max(1, calls_left);
    calls_left = std::max(0, calls_left - 1);
    return d;
  };
  // An agent call's error as a reason; a deadline says whose.
  auto why = [&](const absl::Status& s, absl::Time started, absl::Time deadline) {
    std::string reason(s.message());
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      absl::StrAppend(&reason, " (no answer within ",
                      absl::FormatDuration(absl::Trunc(deadline - started, absl::Milliseconds(1))),
                      ": this call's share of the dry run's ",
                      absl::FormatDuration(options_.dry_run_deadline), " deadline)");
    }
    return reason;
  };
  std::shared_ptr<AgentClient> src_agent;
  absl::StatusOr<cv1::DescribeInstanceResponse> desc = absl::UnavailableError("not asked");
  if (to_check > 0) {
    src_agent = agents_->ForHost(src.report.hostname, src.report.agent_address);
    const cv1::DescribeInstanceRequest di = DescribeRequest(inst.uuid);
    const absl::Time t0 = absl::Now(), deadline = next_deadline();
    ScopedAgentDeadline scope(deadline);
    desc = RetryAgentCall<cv1::DescribeInstanceResponse>(
        "dry run", [&] { return src_agent->DescribeInstance(di); }, true);
    if (!desc.ok()) {
      desc = absl::Status(desc.status().code(), why(desc.status(), t0, deadline));
    } else if (!desc->present()) {
      desc = absl::NotFoundError(
          absl::StrCat("instance ", inst.uuid, " is not on its source ", src.report.hostname));
    } else {
      // What the storage checks judge: each disk's kind and identity as the source sees it now.
      *resp.mutable_instance_disks() = desc->domain().disks();
    }
  }
  std::random_device rd;
  for (auto& hc : checks) {
    if (!hc.passed()) continue;
    if (!desc.ok()) {
      fail(hc, src.report.hostname, "agent_source",
           absl::StrCat("the source agent cannot describe the instance, so the agent "
                        "checks did not run: ",
                        desc.status().message()));
      continue;
    }
    if (absl::Now() >= end) {
      fail(hc, hc.host(), "agent_checks",
           absl::StrCat("not checked by the agents: the dry run's ",
                        absl::FormatDuration(options_.dry_run_deadline),
                        " deadline passed before its turn"));
      continue;
    }
    auto dst = hosts->GetHost(hc.host(), options_.service_down_time);
    if (!dst.ok()) {
      fail(hc, hc.host(), "agent_dest", std::string(dst.status().message()));
      calls_left = std::max(0, calls_left - 3);
      continue;
    }
    auto dst_agent = agents_->ForHost(hc.host(), dst->report.agent_address);
    // The requests a migration would send, with a throwaway id the agents keep no record of.
    const StepTarget probe{absl::StrCat("dryrun-", rd(), "-", rd()), inst.uuid, src.report.hostname,
                           hc.host(), /*dry_run=*/true};
    const auto d = DestCheckRequest(probe, src, desc->domain(), req.options());
    absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> dr;
    {
      const absl::Time t0 = absl::Now(), deadline = next_deadline();
      ScopedAgentDeadline scope(deadline);
      dr = RetryAgentCall<cv1::CheckCanLiveMigrateOnDestResponse>(
          "dry run", [&] { return dst_agent->CheckCanLiveMigrateOnDest(d); }, true);
      if (!dr.ok()) {
        // No answer, so no probe file to clean up that the agent would say it made.
        fail(hc, hc.host(), "agent_dest", why(dr.status(), t0, deadline));
        calls_left = std::max(0, calls_left - 2);
        continue;
      }
    }
    for (const auto& c : dr->checks()) *hc.add_checks() = c;
    if (dr->passed()) {
      const auto s = SrcCheckRequest(probe, dr->dest_check_data(), req.options());
      const absl::Time t0 = absl::Now(), deadline = next_deadline();
      ScopedAgentDeadline scope(deadline);
      auto sr = RetryAgentCall<cv1::CheckCanLiveMigrateOnSrcResponse>(
          "dry run", [&] { return src_agent->CheckCanLiveMigrateOnSrc(s); }, true);
      if (sr.ok()) {
        for (const auto& c : sr->checks()) *hc.add_checks() = c;
        hc.set_passed(sr->passed());
      } else {
        fail(hc, src.report.hostname, "agent_src", why(sr.status(), t0, deadline));
      }
    } else {
      hc.set_passed(false);
      calls_left = std::max(0, calls_left - 1);  // no source check
    }
    const auto cl = DestCleanupRequest(probe, dr->dest_check_data());
    ScopedAgentDeadline scope(next_deadline());
    dst_agent->CheckCanLiveMigrateOnDestCleanup(cl).IgnoreError();
  }
  bool any = false;
  for (auto& hc : checks) {
    if (hc.passed() && resp.chosen_host().empty()) resp.set_chosen_host(hc.host());
    any = any || hc.passed();
    *resp.add_hosts() = hc;
  }
  bool src_ok = true;
  for (const auto& c : resp.instance_checks()) src_ok = src_ok && c.passed();
  resp.set_passed(src_ok && any);
  return resp;
}

}  // namespace livemig::sched
