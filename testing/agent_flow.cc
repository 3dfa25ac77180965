#include "testing/agent_flow.h"

#include "testing/process.h"

namespace livemig::testing {

namespace cv1 = ::livemig::compute::v1;

void AgentFlow::AddHost(const std::string& id, const std::string& hostname,
                        std::shared_ptr<grpc::Channel> channel) {
  hostnames_[id] = hostname;
  stubs_[id] = cv1::ComputeAgent::NewStub(std::move(channel));
}

AgentFlow::S* AgentFlow::Stub(const std::string& host) {
  auto it = stubs_.find(host);
  REQUIRE(it != stubs_.end());
  return it->second.get();
}

std::string AgentFlow::Hostname(const std::string& host) const {
  auto it = hostnames_.find(host);
  return it == hostnames_.end() ? host : it->second;
}

cv1::DescribeInstanceResponse AgentFlow::Describe(const std::string& host) {
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(uuid_);
  auto d = Call(host, &S::DescribeInstance, di);
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  return *d;
}

cv1::LiveMigrationRequest AgentFlow::Prepare(const std::string& mid, const std::string& from,
                                             const std::string& to,
                                             const v1::MigrationOptions& options) {
  auto src_info = Call(from, &S::GetHostInfo, cv1::GetHostInfoRequest());
  INFO(src_info.status().ToString());
  REQUIRE(src_info.ok());
  CHECK(src_info->inventory().hostname() == Hostname(from));
  auto dom = Describe(from);
  REQUIRE(dom.present());
  auto dreq = Step<cv1::CheckCanLiveMigrateOnDestRequest>(mid, from, to);
  *dreq.mutable_source_cpu() = src_info->inventory().cpu();
  dreq.set_source_hypervisor_type(src_info->inventory().hypervisor_type());
  dreq.set_source_hypervisor_version(src_info->inventory().hypervisor_version());
  *dreq.mutable_instance() = dom.domain();
  *dreq.mutable_options() = options;
  auto d = Twice(to, &S::CheckCanLiveMigrateOnDest, dreq);
  INFO(d.DebugString());
  REQUIRE(d.passed());
  auto sreq = Step<cv1::CheckCanLiveMigrateOnSrcRequest>(mid, from, to);
  *sreq.mutable_dest_check_data() = d.dest_check_data();
  *sreq.mutable_options() = options;
  auto s = Twice(from, &S::CheckCanLiveMigrateOnSrc, sreq);
  INFO(s.DebugString());
  REQUIRE(s.passed());
  auto pre = Step<cv1::PreLiveMigrationRequest>(mid, from, to);
  *pre.mutable_migrate_data()->mutable_src_check() = s.src_check_data();
  *pre.mutable_options() = options;
  auto p = Twice(to, &S::PreLiveMigration, pre);
  auto lm = Step<cv1::LiveMigrationRequest>(mid, from, to);
  *lm.mutable_options() = options;
  *lm.mutable_migrate_data()->mutable_dest_check() = d.dest_check_data();
  *lm.mutable_migrate_data()->mutable_src_check() = s.src_check_data();
  *lm.mutable_migrate_data()->mutable_pre_live_migration() = p.pre_live_migration_data();
  return lm;
}

cv1::MigrationProgressReport AgentFlow::WaitForEnd(const std::string& host, const std::string& mid,
                                                   absl::Duration timeout) {
  cv1::GetMigrationProgressRequest g;
  g.set_migration_id(mid);
  g.set_instance_uuid(uuid_);
  cv1::MigrationProgressReport last;
  const bool ended = WaitFor(
      [&] {
        auto r = Call(host, &S::GetMigrationProgress, g);
        if (!r.ok()) return false;
        last = *r;
        return r->state() != cv1::TRANSFER_STATE_RUNNING;
      },
      timeout);
  INFO(last.DebugString());
  REQUIRE(ended);
  return last;
}

void AgentFlow::PostSteps(const std::string& mid, const std::string& from, const std::string& to) {
  Twice(from, &S::PostLiveMigration, Step<cv1::PostLiveMigrationRequest>(mid, from, to));
  auto at = Twice(to, &S::PostLiveMigrationAtDestination,
                  Step<cv1::PostLiveMigrationAtDestinationRequest>(mid, from, to));
  CHECK(at.domain().state() == v1::DOMAIN_STATE_RUNNING);
  CHECK(at.domain().persistent());
}

void AgentFlow::Rollback(const std::string& mid, const std::string& from, const std::string& to) {
  Twice(to, &S::RollbackLiveMigrationAtDestination,
        Step<cv1::RollbackLiveMigrationAtDestinationRequest>(mid, from, to));
  auto r = Twice(from, &S::RollbackLiveMigration,
                 Step<cv1::RollbackLiveMigrationRequest>(mid, from, to));
  CHECK(r.domain().state() == v1::DOMAIN_STATE_RUNNING);
  CHECK_FALSE(Describe(to).present());
}

}  // namespace livemig::testing
