#include "compute/host_reporter.h"

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_map.h"

namespace livemig::agent {

namespace rv1 = ::livemig::registry::v1;

HostReporter::HostReporter(Options options, AgentCore* core,
                           std::unique_ptr<rv1::HostRegistry::StubInterface> stub)
    : options_(std::move(options)),
      core_(core),
      stub_(std::move(stub)),
      started_(absl::Now()),
      seq_(absl::ToUnixMicros(absl::Now())),
      interval_ms_(absl::ToInt64Milliseconds(options_.interval)) {}

HostReporter::~HostReporter() { Stop(); }

void HostReporter::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void HostReporter::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<rv1::ReportHostResponse> HostReporter::ReportOnce() {
  // From reading the inventory until the registry answered: the steps that end a migration wait
  // for it (AgentCore::ReportStarted), so this report cannot land after their outcome.
  core_->ReportStarted();
  absl::Cleanup ended = [this] { core_->ReportEnded(); };
  auto info = core_->GetHostInfo();
  if (!info.ok()) return info.status();
  rv1::ReportHostRequest req;
  v1::HostInventory* inv = req.mutable_inventory();
  *inv = info->inventory();
  inv->set_agent_address(options_.agent_address);
  inv->set_agent_version(options_.agent_version);
  inv->set_report_seq(++seq_);
  inv->set_max_concurrent_migrations(core_->options().max_concurrent_migrations);
  const absl::Time now = absl::Now();
  inv->mutable_reported_at()->set_seconds(absl::ToUnixSeconds(now));
  inv->mutable_agent_started_at()->set_seconds(absl::ToUnixSeconds(started_));
  inv->mutable_agent_started_at()->set_nanos(
      static_cast<int32_t>(absl::ToUnixNanos(started_) % 1000000000));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(now + options_.rpc_deadline));
  rv1::ReportHostResponse resp;
  grpc::Status s = stub_->ReportHost(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s, "ReportHost to the scheduler");
  if (resp.next_report_interval_ms() > 0) interval_ms_ = resp.next_report_interval_ms();
  return resp;
}

void HostReporter::Loop() {
  absl::Duration backoff = absl::Milliseconds(500);
  while (!stop_.HasBeenNotified()) {
    auto r = ReportOnce();
    absl::Duration wait;
    if (r.ok()) {
      if (failed_ > 0 && sent_ == 0) LogInfo("host report accepted by the scheduler");
      ++sent_;
      backoff = absl::Milliseconds(500);
      wait = absl::Milliseconds(interval_ms_.load());
    } else {
      ++failed_;
      LogWarning("host report failed (retrying in %s; steps are still served): %s",
                 absl::FormatDuration(backoff), r.status().message());
      wait = backoff;
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    stop_.WaitForNotificationWithTimeout(wait);
  }
}

}  // namespace livemig::agent
