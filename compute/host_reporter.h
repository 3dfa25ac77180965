// HostReporter: reports the agent's host to the scheduler's host registry at start-up and every
// report interval (default 10 s). When the scheduler is unreachable it retries with backoff and
// the agent keeps serving steps. Each report carries a sequence number that only grows (seeded
// from the agent's start time), so a late report cannot overwrite a newer one.
#ifndef LIVEMIG_COMPUTE_HOST_REPORTER_H_
#define LIVEMIG_COMPUTE_HOST_REPORTER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "compute/agent_core.h"
#include "proto/host_registry.grpc.pb.h"

namespace livemig::agent {

class HostReporter {
 public:
  struct Options {
    std::string agent_address;  // where the scheduler reaches this agent
    std::string agent_version = "0.1.0";
    absl::Duration interval = absl::Seconds(10);
    absl::Duration rpc_deadline = absl::Seconds(5);
    absl::Duration max_backoff = absl::Seconds(10);
  };

  HostReporter(Options options, AgentCore* core,
               std::unique_ptr<livemig::registry::v1::HostRegistry::StubInterface> stub);
  ~HostReporter();  // stops

  void Start();
  void Stop();
  // One report now; returns the registry's answer or the error.
  absl::StatusOr<livemig::registry::v1::ReportHostResponse> ReportOnce();
  int64_t reports_sent() const { return sent_; }
  int64_t reports_failed() const { return failed_; }

 private:
  void Loop();

  Options options_;
  AgentCore* core_;
  std::unique_ptr<livemig::registry::v1::HostRegistry::StubInterface> stub_;
  const absl::Time started_;
  std::atomic<int64_t> seq_;
  std::atomic<int64_t> sent_{0}, failed_{0};
  std::atomic<int64_t> interval_ms_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace livemig::agent

#endif  // LIVEMIG_COMPUTE_HOST_REPORTER_H_
