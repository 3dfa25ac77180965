// The fixture of the tests on a real PostgreSQL (the stores', the scheduler's): a fresh database
// with the schema applied, a pool over it and its stores; and a host report to seed hosts with.
//
//   struct Db : SchemaDb { Db() : SchemaDb(SharedPgServer()) {} };
//   Db db;
//   REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 1)).ok());
#ifndef LIVEMIG_TESTING_SCHEMA_DB_H_
#define LIVEMIG_TESTING_SCHEMA_DB_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "db/pg_pool.h"
#include "db/pg_stores.h"
#include "db/records.h"
#include "testing/pg_server.h"

namespace livemig::testing {

// The test process's PostgreSQL server, started on first use (the test fails if it cannot).
PgServer& SharedPgServer();

struct SchemaDb {
  // A new, empty database on `server`, the schema applied, and a pool of `pool_size`
  // connections to it.
  explicit SchemaDb(PgServer& server, int pool_size = 4);
  // Runs `sql`, which must succeed, in a transaction of its own.
  void Exec(const std::string& sql);

  std::string conninfo;
  std::unique_ptr<db::PgPool> pool;
  std::unique_ptr<db::PgStores> stores;
};

// The report of host `host` (report number `seq`) running `domains`: Xen 4.17 and libvirt 9.0 on
// x86_64 Skylake, 16 GiB of which 8 free and 512 MiB reserved, network br-guest, shared storage
// /var/lib/livemig/instances.
db::HostReport SampleReport(const std::string& host, int64_t seq,
                            std::vector<db::DomainReport> domains = {});

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_SCHEMA_DB_H_
