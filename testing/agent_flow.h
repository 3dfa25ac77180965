// A test client that carries one instance through the compute agents' steps by hand, as the
// scheduler would but without it: the driver contract seen through the agents' gRPC API (thin
// handlers over the driver), used against the QEMU lab (integration_tests/agent_lab) and real Xen
// (integration_tests/xenlab). Every mutating step can be sent twice and both answers compared,
// which is how idempotency is held.
//
//   AgentFlow f(uuid);
//   f.AddHost("a", "lab-a", channel_a);  f.AddHost("b", "lab-b", channel_b);
//   auto lm = f.Prepare("m1", "a", "b");          // describe, both checks, pre (each twice)
//   f.Call("a", &AgentFlow::S::LiveMigration, lm);
//   f.WaitForEnd("a", "m1", absl::Seconds(90));  f.PostSteps("m1", "a", "b");
//
// Failures are Catch2 assertions (REQUIRE/CHECK) in the calling test case.
#ifndef LIVEMIG_TESTING_AGENT_FLOW_H_
#define LIVEMIG_TESTING_AGENT_FLOW_H_

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/compute_agent.grpc.pb.h"

namespace livemig::testing {

class AgentFlow {
 public:
  using S = compute::v1::ComputeAgent::Stub;
  template <typename Req, typename Resp>
  using Rpc = grpc::Status (S::*)(grpc::ClientContext*, const Req&, Resp*);

  explicit AgentFlow(std::string instance_uuid) : uuid_(std::move(instance_uuid)) {}

  // `id`: the test's name of the host ("a"); `hostname`: the name its agent reports (the
  // scheduler's name for it, sent as source_host/dest_host).
  void AddHost(const std::string& id, const std::string& hostname,
               std::shared_ptr<grpc::Channel> channel);
  const std::string& uuid() const { return uuid_; }

  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(const std::string& host, Rpc<Req, Resp> rpc, const Req& req,
                            absl::Duration deadline = absl::Seconds(60)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(absl::ToInt64Milliseconds(deadline)));
    Resp resp;
    grpc::Status s = (Stub(host)->*rpc)(&ctx, req, &resp);
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    return resp;
  }

  // Calls twice and checks that both answers are the same.
  template <typename Req, typename Resp>
  Resp Twice(const std::string& host, Rpc<Req, Resp> rpc, const Req& req) {
    auto first = Call(host, rpc, req);
    INFO(first.status().ToString());
    REQUIRE(first.ok());
    auto second = Call(host, rpc, req);
    INFO(second.status().ToString());
    REQUIRE(second.ok());
    CHECK(first->SerializeAsString() == second->SerializeAsString());
    return *first;
  }

  // A step's request with the migration id, the instance and both hosts' names filled in.
  template <typename Req>
  Req Step(const std::string& mid, const std::string& from, const std::string& to) const {
    Req r;
    r.set_migration_id(mid);
    r.set_instance_uuid(uuid_);
    r.set_source_host(Hostname(from));
    r.set_dest_host(Hostname(to));
    return r;
  }

  // The instance as `host`'s agent describes it.
  compute::v1::DescribeInstanceResponse Describe(const std::string& host);

  // Flow steps 4-6: describe on the source, check on the destination, check on the source,
  // pre_live_migration on the destination (each twice). Returns the LiveMigration request.
  compute::v1::LiveMigrationRequest Prepare(const std::string& mid, const std::string& from,
                                            const std::string& to,
                                            const v1::MigrationOptions& options = {});
  // Polls GetMigrationProgress on the source until the transfer is no longer running.
  compute::v1::MigrationProgressReport WaitForEnd(const std::string& host, const std::string& mid,
                                                  absl::Duration timeout);
  // post_live_migration on the source, then at the destination (each twice); the domain runs
  // there, persistent.
  void PostSteps(const std::string& mid, const std::string& from, const std::string& to);
  // rollback at the destination, then on the source (each twice); the domain runs on the source
  // and the destination no longer has it.
  void Rollback(const std::string& mid, const std::string& from, const std::string& to);

 private:
  S* Stub(const std::string& host);
  std::string Hostname(const std::string& host) const;

  std::string uuid_;
  std::map<std::string, std::string> hostnames_;
  std::map<std::string, std::unique_ptr<S>> stubs_;
};

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_AGENT_FLOW_H_
