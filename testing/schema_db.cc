#include "testing/schema_db.h"

#include <catch2/catch.hpp>
#include <utility>

#include "db/schema.h"

namespace livemig::testing {

PgServer& SharedPgServer() {
  static auto server = [] {
    auto s = PgServer::Start();
    if (!s.ok()) FAIL(s.status().ToString());
    return std::move(s).value();
  }();
  return *server;
}

SchemaDb::SchemaDb(PgServer& server, int pool_size) {
  auto c = server.CreateDatabase();
  REQUIRE(c.ok());
  conninfo = *c;
  db::PgPool::Options o;
  o.conninfo = conninfo;
  o.size = pool_size;
  auto p = db::PgPool::Create(o);
  REQUIRE(p.ok());
  pool = std::move(p).value();
  REQUIRE(db::ApplySchema(*pool).ok());
  stores = std::make_unique<db::PgStores>(pool.get());
}

void SchemaDb::Exec(const std::string& sql) {
  REQUIRE(pool->Run("test sql",
                    [&](pqxx::work& w) {
                      w.exec(sql);
                      return absl::OkStatus();
                    })
              .ok());
}

db::HostReport SampleReport(const std::string& host, int64_t seq,
                            std::vector<db::DomainReport> domains) {
  db::HostReport r;
  r.hostname = host;
  r.agent_address = "unix:/run/" + host + ".sock";
  r.agent_version = "0.1.0";
  r.hypervisor_type = "Xen";
  r.hypervisor_version = 4017000;
  r.libvirt_version = 9000000;
  r.cpu_arch = "x86_64";
  r.cpu_model = "Skylake-Server";
  r.cpu_features = {"sse4.2", "avx2"};
  r.memory_total_mib = 16384;
  r.memory_free_mib = 8192;
  r.memory_reserved_mib = 512;
  r.network_segments = {"br-guest"};
  r.shared_storage = {"/var/lib/livemig/instances"};
  r.instance_path = "/var/lib/livemig/instances";
  r.capabilities_json = R"({"abort": false, "post_copy": false})";
  r.agent_boot_id = "boot-1";
  r.seq = seq;
  r.domains = std::move(domains);
  return r;
}

}  // namespace livemig::testing
