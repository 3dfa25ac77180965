// livemig-dbctl: applies and inspects the schema of the live-migration database.
//
//   livemig-dbctl --db "host=/run/livemig/pg port=5432 dbname=postgres" schema apply
//   livemig-dbctl --db ... schema status
//   livemig-dbctl --db ... purge --older-than-days 30
#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_map.h"
#include "db/pg_stores.h"
#include "db/schema.h"

namespace {

int Fail(const absl::Status& s) {
  std::cerr << "livemig-dbctl: " << s.message() << "\n";
  return livemig::ExitCodeFor(s.code());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "livemig-dbctl: apply and inspect the live-migration database schema.\n"
      "The scheduler applies the schema itself at start-up; this tool is for operators and "
      "deployment scripts."};
  std::string db = std::getenv("LIVEMIG_DB") ? std::getenv("LIVEMIG_DB") : "";
  app.add_option("--db", db, "libpq connection string (env LIVEMIG_DB)");
  app.require_subcommand(1);

  auto* schema = app.add_subcommand("schema", "schema migrations");
  schema->require_subcommand(1);
  auto* apply = schema->add_subcommand("apply", "apply every pending migration (idempotent)");
  auto* status =
      schema->add_subcommand("status", "print the database's and this binary's versions");
  auto* purge = app.add_subcommand("purge", "delete finished migrations older than the retention");
  int days = 30;
  purge->add_option("--older-than-days", days, "retention in days")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  livemig::db::PgPool::Options options;
  options.conninfo = db;
  options.size = 1;
  auto pool = livemig::db::PgPool::Create(options);
  if (!pool.ok()) return Fail(pool.status());

  if (apply->parsed()) {
    auto r = livemig::db::ApplySchema(**pool);
    if (!r.ok()) return Fail(r.status());
    if (r->applied.empty()) {
      std::cout << "schema is up to date at version " << r->version_after << "\n";
    } else {
      std::cout << "schema upgraded from version " << r->version_before << " to "
                << r->version_after << " (applied " << absl::StrJoin(r->applied, ", ") << ")\n";
    }
  } else if (status->parsed()) {
    auto v = livemig::db::CurrentSchemaVersion(**pool);
    if (!v.ok()) return Fail(v.status());
    std::cout << "database schema version: " << *v << "\n"
              << "this binary knows up to:  " << livemig::db::LatestSchemaVersion() << "\n";
    if (*v < livemig::db::LatestSchemaVersion()) std::cout << "pending: run 'schema apply'\n";
  } else if (purge->parsed()) {
    livemig::db::PgStores stores(pool->get());
    auto n = stores.migrations().PurgeFinished(absl::Now() - absl::Hours(24) * days);
    if (!n.ok()) return Fail(n.status());
    std::cout << "purged " << *n << " finished migration(s) older than " << days << " days\n";
  }
  return 0;
}
