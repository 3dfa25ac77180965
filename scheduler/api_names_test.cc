// The REST API's enum names: the same as the tables' and the database's, and back.
#include "scheduler/api_names.h"

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "common/migration_status.h"
#include "google/protobuf/util/json_util.h"
#include "scheduler/convert.h"

namespace livemig::sched {
namespace {

TEST_CASE("api names: statuses as Nova spells them, steps and states as stored") {
  for (MigrationStatus s : AllMigrationStatuses()) {
    const auto* v = v1::MigrationStatus_descriptor()->FindValueByNumber(ToProtoStatus(s));
    CHECK(ApiEnumName(v) == ToString(s));
    CHECK(FindApiEnumValue(v->type(), ToString(s)) == v);
  }
  const auto* steps = v1::MigrationStep_descriptor();
  for (int i = 0; i < steps->value_count(); ++i) {
    CHECK(ApiEnumName(steps->value(i)) ==
          StepName(static_cast<v1::MigrationStep>(steps->value(i)->number())));
  }
  const auto* states = v1::DomainState_descriptor();
  for (int i = 0; i < states->value_count(); ++i) {
    CHECK(ApiEnumName(states->value(i)) ==
          DomainStateName(static_cast<v1::DomainState>(states->value(i)->number())));
  }
  CHECK(ApiEnumName(sv1::StepOutcome_descriptor()->FindValueByName("STEP_OUTCOME_SUCCEEDED")) ==
        "succeeded");
  CHECK(ApiEnumName(sv1::EvacuationStatus_descriptor()->FindValueByName(
            "EVACUATION_STATUS_COMPLETED_WITH_ERRORS")) == "completed_with_errors");
  // Proto names are still found (older clients); anything else is not.
  CHECK(FindApiEnumValue(steps, "MIGRATION_STEP_LIVE_MIGRATION")->name() ==
        "MIGRATION_STEP_LIVE_MIGRATION");
  CHECK(FindApiEnumValue(steps, "sideways") == nullptr);
}

TEST_CASE("api names: ToApiJson renames nested and repeated enums; bodies parse back") {
  sv1::Migration m;
  m.set_id("6f1c1e0a-1b2c-4d3e-8f40-0123456789ab");
  m.set_status(v1::MIGRATION_STATUS_RUNNING_POSTCOPY);
  m.set_step(v1::MIGRATION_STEP_LIVE_MIGRATION);
  m.mutable_options()->set_mode(v1::MIGRATION_MODE_LIVE);
  m.add_events()->set_outcome(sv1::STEP_OUTCOME_FAILED);
  const std::string out = ToApiJson(m);
  CHECK(out ==
        R"x({"id":"6f1c1e0a-1b2c-4d3e-8f40-0123456789ab","status":"running (post-copy)",)x"
        R"x("step":"live_migration","options":{"mode":"live"},"events":[{"outcome":"failed"}]})x");
  const std::string pretty = ToApiJson(m, {true, true});
  CHECK(pretty.find("\n  \"number\": \"0\",\n") != std::string::npos);
  CHECK(pretty.back() == '\n');

  nlohmann::json body = nlohmann::json::parse(out);
  ApiEnumNamesToProto(body, sv1::Migration::descriptor());
  sv1::Migration back;
  REQUIRE(google::protobuf::util::JsonStringToMessage(body.dump(), &back).ok());
  CHECK(back.status() == v1::MIGRATION_STATUS_RUNNING_POSTCOPY);
  CHECK(back.options().mode() == v1::MIGRATION_MODE_LIVE);
  CHECK(back.events(0).outcome() == sv1::STEP_OUTCOME_FAILED);
}

TEST_CASE(
    "api names: an enum filter refuses 0 and unknown numbers, naming the field and the names") {
  google::protobuf::RepeatedField<int> ok;
  ok.Add(v1::MIGRATION_STATUS_RUNNING);
  ok.Add(v1::MIGRATION_STATUS_FAILED);
  CHECK(CheckEnumFilter("statuses", ok, v1::MigrationStatus_descriptor()).ok());
  CHECK(CheckEnumFilter("statuses", {}, v1::MigrationStatus_descriptor()).ok());
  for (int bad : {0, 999}) {
    google::protobuf::RepeatedField<int> v = ok;
    v.Add(bad);
    const absl::Status s = CheckEnumFilter("statuses", v, v1::MigrationStatus_descriptor());
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(s.message().find(absl::StrCat("field 'statuses' has an invalid value ", bad)) == 0);
    CHECK(s.message().find("running (post-copy)") != std::string::npos);  // the API's names
    CHECK(s.message().find("unspecified") == std::string::npos);
  }
  google::protobuf::RepeatedField<int> states;
  states.Add(77);
  const absl::Status st = CheckEnumFilter("states", states, v1::DomainState_descriptor());
  CHECK(st.message().find("field 'states' has an invalid value 77: use ") == 0);
  CHECK(st.message().find("running") != std::string::npos);
  // A value the API never answers with is refused and not offered.
  google::protobuf::RepeatedField<int> failed;
  failed.Add(sv1::EVACUATION_STATUS_FAILED);
  CHECK(CheckEnumFilter("statuses", failed, sv1::EvacuationStatus_descriptor()).ok());
  const absl::Status never = CheckEnumFilter("statuses", failed, sv1::EvacuationStatus_descriptor(),
                                             {sv1::EVACUATION_STATUS_FAILED});
  INFO(never.ToString());
  CHECK(never.code() == absl::StatusCode::kInvalidArgument);
  CHECK(never.message().find("completed_with_errors") != std::string::npos);
  CHECK(never.message().find("failed") == std::string::npos);
}

}  // namespace
}  // namespace livemig::sched
