// Round-trips of the wire contracts: what one side serializes, the other reads back whole.
#include <catch2/catch.hpp>

#include "proto/compute_agent.grpc.pb.h"
#include "proto/host_registry.grpc.pb.h"
#include "proto/scheduler.grpc.pb.h"

namespace {

template <typename T>
T RoundTrip(const T& in) {
  std::string wire;
  REQUIRE(in.SerializeToString(&wire));
  T out;
  REQUIRE(out.ParseFromString(wire));
  return out;
}

TEST_CASE("LiveMigrate request round-trips with its options") {
  livemig::scheduler::v1::LiveMigrateRequest req;
  req.set_instance_uuid("5b0e3c1a-2f4d-4e6b-9a7c-1d2e3f4a5b6c");
  req.set_destination("lab-b");
  req.set_request_id("req-1");
  req.set_dry_run(true);
  auto* o = req.mutable_options();
  o->set_completion_timeout_s(120);
  o->set_max_downtime_ms(500);
  o->set_bandwidth_mib_s(8);
  o->set_allow_post_copy(true);
  o->set_mode(livemig::v1::MIGRATION_MODE_OFFLINE);
  o->set_block_migration(livemig::v1::BLOCK_MIGRATION_NO);
  o->set_completion_action(livemig::v1::COMPLETION_ACTION_FORCE_COMPLETE);
  auto out = RoundTrip(req);
  CHECK(out.instance_uuid() == req.instance_uuid());
  CHECK(out.destination() == "lab-b");
  CHECK(out.dry_run());
  CHECK(out.options().has_completion_timeout_s());
  CHECK(out.options().completion_timeout_s() == 120);
  CHECK(out.options().max_downtime_ms() == 500);
  CHECK(out.options().bandwidth_mib_s() == 8);
  CHECK(out.options().mode() == livemig::v1::MIGRATION_MODE_OFFLINE);
  CHECK(out.options().completion_action() == livemig::v1::COMPLETION_ACTION_FORCE_COMPLETE);
  // An unset optional stays unset: "default" is distinguishable from 0.
  livemig::scheduler::v1::LiveMigrateRequest bare;
  CHECK_FALSE(RoundTrip(bare).options().has_bandwidth_mib_s());
}

TEST_CASE("every agent step request carries the migration id at the same field number") {
  const google::protobuf::Descriptor* steps[] = {
      livemig::compute::v1::CheckCanLiveMigrateOnDestRequest::descriptor(),
      livemig::compute::v1::CheckCanLiveMigrateOnSrcRequest::descriptor(),
      livemig::compute::v1::CheckCanLiveMigrateOnDestCleanupRequest::descriptor(),
      livemig::compute::v1::PreLiveMigrationRequest::descriptor(),
      livemig::compute::v1::LiveMigrationRequest::descriptor(),
      livemig::compute::v1::AbortLiveMigrationRequest::descriptor(),
      livemig::compute::v1::ForceCompleteLiveMigrationRequest::descriptor(),
      livemig::compute::v1::PostLiveMigrationRequest::descriptor(),
      livemig::compute::v1::PostLiveMigrationAtDestinationRequest::descriptor(),
      livemig::compute::v1::RollbackLiveMigrationRequest::descriptor(),
      livemig::compute::v1::RollbackLiveMigrationAtDestinationRequest::descriptor(),
  };
  for (const auto* d : steps) {
    INFO(d->full_name());
    const auto* f = d->FindFieldByName("migration_id");
    REQUIRE(f != nullptr);
    CHECK(f->number() == 1);
    CHECK(f->type() == google::protobuf::FieldDescriptor::TYPE_STRING);
  }
}

TEST_CASE("the agent service has one RPC per step of the flow") {
  const auto* svc = livemig::compute::v1::ComputeAgent::service_full_name();
  CHECK(std::string(svc) == "livemig.compute.v1.ComputeAgent");
  const auto* d = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(svc);
  REQUIRE(d != nullptr);
  for (const char* rpc :
       {"GetHostInfo", "ListDomains", "DescribeInstance", "CheckCanLiveMigrateOnDest",
        "CheckCanLiveMigrateOnSrc", "CheckCanLiveMigrateOnDestCleanup", "PreLiveMigration",
        "LiveMigration", "GetMigrationProgress", "WatchMigrationProgress", "AbortLiveMigration",
        "ForceCompleteLiveMigration", "PostLiveMigration", "PostLiveMigrationAtDestination",
        "RollbackLiveMigration", "RollbackLiveMigrationAtDestination"}) {
    INFO(rpc);
    CHECK(d->FindMethodByName(rpc) != nullptr);
  }
  const auto* api = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      livemig::scheduler::v1::SchedulerApi::service_full_name());
  REQUIRE(api != nullptr);
  for (const char* rpc :
       {"LiveMigrate", "GetMigration", "ListMigrations", "WatchMigration", "AbortMigration",
        "ForceCompleteMigration", "CheckMigration", "ListHosts", "GetHost", "SetHostEnabled",
        "EvacuateHost", "GetEvacuation", "ListEvacuations", "ListInstances", "GetInstance"}) {
    INFO(rpc);
    CHECK(api->FindMethodByName(rpc) != nullptr);
  }
}

TEST_CASE("a host report round-trips its inventory and domains") {
  livemig::registry::v1::ReportHostRequest req;
  auto* inv = req.mutable_inventory();
  inv->set_hostname("lab-a");
  inv->set_hypervisor_type("Xen");
  inv->set_hypervisor_version(4017000);
  inv->set_report_seq(1700000000000001);
  auto* dom = inv->add_domains();
  dom->set_uuid("5b0e3c1a-2f4d-4e6b-9a7c-1d2e3f4a5b6c");
  dom->set_name("web-1");
  dom->set_state(livemig::v1::DOMAIN_STATE_RUNNING);
  dom->set_memory_mib(64);
  auto out = RoundTrip(req);
  CHECK(out.inventory().hostname() == "lab-a");
  CHECK(out.inventory().hypervisor_version() == 4017000);
  CHECK(out.inventory().report_seq() == 1700000000000001);
  REQUIRE(out.inventory().domains_size() == 1);
  CHECK(out.inventory().domains(0).name() == "web-1");
  CHECK(out.inventory().domains(0).state() == livemig::v1::DOMAIN_STATE_RUNNING);
}

TEST_CASE("progress without bytes (Xen) is distinguishable from zero bytes") {
  livemig::v1::MigrationProgress p;
  p.set_phase(livemig::v1::MIGRATION_PHASE_PRE_COPY);
  p.set_elapsed_ms(1500);
  auto out = RoundTrip(p);
  CHECK(out.elapsed_ms() == 1500);
  CHECK(out.phase() == livemig::v1::MIGRATION_PHASE_PRE_COPY);
  CHECK_FALSE(out.has_bytes());
}

}  // namespace
