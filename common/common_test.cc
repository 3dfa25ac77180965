// Tests of the status helpers: migration status rules and the one error mapping.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/migration_status.h"
#include "common/retention.h"
#include "common/retry.h"
#include "common/status_macros.h"
#include "common/status_map.h"

namespace livemig {
namespace {

TEST_CASE("migration status names round-trip in Nova's spelling") {
  for (MigrationStatus s : AllMigrationStatuses()) {
    auto parsed = ParseMigrationStatus(ToString(s));
    REQUIRE(parsed.has_value());
    CHECK(*parsed == s);
  }
  CHECK(ToString(MigrationStatus::kRunningPostCopy) == "running (post-copy)");
  CHECK(ToString(MigrationStatus::kPostMigrating) == "post-migrating");
  CHECK(ParseMigrationStatus("POST_MIGRATING") == MigrationStatus::kPostMigrating);
  CHECK(ParseMigrationStatus("running-post-copy") == MigrationStatus::kRunningPostCopy);
  CHECK_FALSE(ParseMigrationStatus("done").has_value());
  CHECK_FALSE(ParseMigrationStatus("").has_value());
}

TEST_CASE("terminal statuses release the instance; error does not") {
  CHECK(IsTerminal(MigrationStatus::kCompleted));
  CHECK(IsTerminal(MigrationStatus::kFailed));
  CHECK(IsTerminal(MigrationStatus::kCancelled));
  CHECK_FALSE(IsTerminal(MigrationStatus::kError));
  CHECK(IsActive(MigrationStatus::kError));
  CHECK(IsActive(MigrationStatus::kQueued));
  int terminal = 0;
  for (MigrationStatus s : AllMigrationStatuses()) terminal += IsTerminal(s) ? 1 : 0;
  CHECK(terminal == 3);
}

TEST_CASE("the state machine allows the flow and forbids going back after post-copy") {
  using S = MigrationStatus;
  const S flow[] = {S::kAccepted,        S::kQueued,        S::kPreparing, S::kRunning,
                    S::kRunningPostCopy, S::kPostMigrating, S::kCompleted};
  for (size_t i = 0; i + 1 < sizeof(flow) / sizeof(flow[0]); ++i) {
    INFO(ToString(flow[i]) << " -> " << ToString(flow[i + 1]));
    CHECK(CanTransition(flow[i], flow[i + 1]));
  }
  // Rollback is possible up to running, never after post-copy started.
  CHECK(CanTransition(S::kRunning, S::kFailed));
  CHECK(CanTransition(S::kPreparing, S::kCancelled));
  CHECK_FALSE(CanTransition(S::kRunningPostCopy, S::kFailed));
  CHECK_FALSE(CanTransition(S::kPostMigrating, S::kFailed));
  CHECK_FALSE(CanTransition(S::kPostMigrating, S::kRunning));
  // Terminal statuses are final.
  for (S to : AllMigrationStatuses()) {
    CHECK_FALSE(CanTransition(S::kCompleted, to));
    CHECK_FALSE(CanTransition(S::kFailed, to));
    CHECK_FALSE(CanTransition(S::kCancelled, to));
    CHECK_FALSE(CanTransition(to, to));
  }
  CHECK(IsPastPointOfNoReturn(S::kRunningPostCopy));
  CHECK_FALSE(IsPastPointOfNoReturn(S::kRunning));
}

TEST_CASE("errors map once to gRPC, HTTP and exit codes as docs/DESIGN.md's error table says") {
  CHECK(HttpCodeFor(absl::StatusCode::kInvalidArgument) == 400);
  CHECK(HttpCodeFor(absl::StatusCode::kNotFound) == 404);
  CHECK(HttpCodeFor(absl::StatusCode::kAborted) == 409);
  CHECK(HttpCodeFor(absl::StatusCode::kFailedPrecondition) == 409);
  CHECK(HttpCodeFor(absl::StatusCode::kUnauthenticated) == 401);
  CHECK(HttpCodeFor(absl::StatusCode::kPermissionDenied) == 403);
  CHECK(HttpCodeFor(absl::StatusCode::kUnavailable) == 503);
  CHECK(HttpCodeFor(absl::StatusCode::kDeadlineExceeded) == 504);
  CHECK(HttpCodeFor(absl::StatusCode::kInternal) == 500);
  CHECK(StatusCodeForHttp(404) == absl::StatusCode::kNotFound);
  CHECK(StatusCodeForHttp(202) == absl::StatusCode::kOk);

  absl::Status s = absl::FailedPreconditionError("host-b is disabled: maintenance");
  grpc::Status g = ToGrpcStatus(s);
  CHECK(g.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(g.error_message() == "host-b is disabled: maintenance");
  absl::Status back = FromGrpcStatus(g, "LiveMigrate");
  CHECK(back.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(back.message() == "LiveMigrate: host-b is disabled: maintenance");
  CHECK(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "")).message() == "UNAVAILABLE");
  CHECK(ToGrpcStatus(absl::OkStatus()).ok());

  CHECK(ExitCodeFor(absl::StatusCode::kOk) == 0);
  CHECK(ExitCodeFor(absl::StatusCode::kInvalidArgument) !=
        ExitCodeFor(absl::StatusCode::kNotFound));
}

absl::StatusOr<int> Half(int x) {
  if (x % 2) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(*out, Half(h));
  RETURN_IF_ERROR(absl::OkStatus());
  return absl::OkStatus();
}

// Decisions about another process's error read its structured reason, never its text: the
// reason must cross gRPC (as a google.rpc.ErrorInfo in the status details) intact.
TEST_CASE("an error's structured reason crosses gRPC; its text does not decide") {
  absl::Status refused =
      WithReason(absl::FailedPreconditionError("domain x runs on the destination b"),
                 v1::ERROR_REASON_ONLY_RUNNING_COPY);
  CHECK(ReasonOf(refused) == v1::ERROR_REASON_ONLY_RUNNING_COPY);
  grpc::Status wire = ToGrpcStatus(refused);
  CHECK(wire.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK_FALSE(wire.error_details().empty());
  v1::RpcStatus details;
  REQUIRE(details.ParseFromString(wire.error_details()));  // google.rpc.Status's wire format
  REQUIRE(details.details_size() == 1);
  CHECK(details.details(0).type_url() == "type.googleapis.com/google.rpc.ErrorInfo");
  absl::Status back = FromGrpcStatus(wire, "RollbackLiveMigrationAtDestination on b");
  CHECK(back.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(back.message() ==
        "RollbackLiveMigrationAtDestination on b: domain x runs on the destination b");
  CHECK(ReasonOf(back) == v1::ERROR_REASON_ONLY_RUNNING_COPY);
  // The same words without the reason decide nothing.
  absl::Status words = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "it may be the only running copy"));
  CHECK(ReasonOf(words) == v1::ERROR_REASON_UNSPECIFIED);
  CHECK(ToGrpcStatus(absl::InternalError("x")).error_details().empty());
  CHECK(WithReason(absl::OkStatus(), v1::ERROR_REASON_ONLY_RUNNING_COPY).ok());
  // Details from another peer that are not ours are ignored.
  CHECK(ReasonOf(FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "m", "\x01garbage"))) ==
        v1::ERROR_REASON_UNSPECIFIED);
}

TEST_CASE("status macros propagate the first error") {
  int out = 0;
  CHECK(Quarter(8, &out).ok());
  CHECK(out == 2);
  CHECK(Quarter(6, &out).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("the fake clock moves only when told") {
  FakeClock clock;
  absl::Time t0 = clock.Now();
  CHECK(clock.Now() == t0);
  clock.Advance(absl::Seconds(5));
  CHECK(clock.Now() - t0 == absl::Seconds(5));
}

TEST_CASE("the fake clock's waits end when it is moved past their end, not before") {
  FakeClock clock;
  // SleepFor: the sleeper is seen waiting, stays asleep while the clock is short of its end,
  // and wakes when the clock passes it.
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.SleepFor(absl::Minutes(10));
    woke = true;
  });
  REQUIRE(clock.AwaitWaiters(1, absl::Seconds(10)));
  clock.Advance(absl::Minutes(9));
  // Given real time to (wrongly) wake, it does not: still one waiter, not woken.
  CHECK_FALSE(clock.AwaitWaiters(2, absl::Milliseconds(200)));
  CHECK_FALSE(woke);
  clock.Advance(absl::Minutes(1));
  sleeper.join();
  CHECK(woke);
  CHECK(clock.Waiters() == 0);
  clock.SleepFor(absl::ZeroDuration());  // returns at once

  // AwaitWithTimeout: ends with false when the fake timeout passes, with true when the
  // condition holds first.
  absl::Mutex mu;
  bool flag = false;
  bool result = true;
  std::thread waiter([&] {
    absl::MutexLock l(&mu);
    result = clock.AwaitWithTimeout(&mu, absl::Condition(&flag), absl::Seconds(6));
  });
  REQUIRE(clock.AwaitWaiters(1, absl::Seconds(10)));
  clock.Advance(absl::Seconds(6));
  waiter.join();
  CHECK_FALSE(result);
  std::thread waiter2([&] {
    absl::MutexLock l(&mu);
    result = clock.AwaitWithTimeout(&mu, absl::Condition(&flag), absl::Hours(1));
  });
  REQUIRE(clock.AwaitWaiters(1, absl::Seconds(10)));
  {
    absl::MutexLock l(&mu);
    flag = true;
  }
  waiter2.join();
  CHECK(result);
  CHECK(clock.Waiters() == 0);
}

TEST_CASE("finished things are kept for the window and at most the count, whichever is smaller") {
  const absl::Time t0 = absl::FromUnixSeconds(1'700'000'000);
  FinishedRetention<std::string> r({absl::Hours(1), 3});
  CHECK(r.Expire(t0).empty());
  r.Finished("a", t0);
  r.Finished("b", t0 + absl::Minutes(10));
  r.Finished("c", t0 + absl::Minutes(20));
  CHECK(r.Expire(t0 + absl::Minutes(20)).empty());  // 3 within the hour: all kept
  // A fourth: the oldest goes, at once.
  r.Finished("d", t0 + absl::Minutes(30));
  CHECK(r.Expire(t0 + absl::Minutes(30)) == std::vector<std::string>{"a"});
  CHECK(r.size() == 3);
  // Noted again: moved to its new time, not counted twice.
  r.Finished("b", t0 + absl::Minutes(40));
  CHECK(r.size() == 3);
  // The window: c (finished at 20 min) is past it just after 80 min, exactly an hour is kept.
  CHECK(r.Expire(t0 + absl::Minutes(80)).empty());
  CHECK(r.Expire(t0 + absl::Minutes(80) + absl::Seconds(1)) == std::vector<std::string>{"c"});
  // Forgotten (restarted): not dropped, not counted.
  r.Finished("e", t0 + absl::Minutes(50));
  r.Forget("e");
  r.Forget("never-noted");
  CHECK(r.size() == 2);
  CHECK(r.Expire(t0 + absl::Hours(3)) == std::vector<std::string>{"d", "b"});  // oldest first
  CHECK(r.size() == 0);
  // Equal times: the smaller key goes first.
  r.Finished("y", t0);
  r.Finished("x", t0);
  r.Finished("z", t0);
  r.Finished("w", t0);
  CHECK(r.Expire(t0) == std::vector<std::string>{"w"});
}

TEST_CASE("the retry policy: which failures, how many attempts, the waits between them") {
  RetryPolicy p;  // the defaults the scheduler uses
  CHECK(p.Retryable(absl::UnavailableError("refused")));
  CHECK(p.Retryable(absl::DeadlineExceededError("no answer")));
  CHECK_FALSE(p.Retryable(absl::FailedPreconditionError("check failed")));
  CHECK_FALSE(p.Retryable(absl::NotFoundError("no such instance")));
  RetryPolicy dry = p;
  dry.retry_deadline_exceeded = false;  // as the dry run uses it
  CHECK(dry.Retryable(absl::UnavailableError("refused")));
  CHECK_FALSE(dry.Retryable(absl::DeadlineExceededError("no answer")));
  CHECK(p.Backoff(0) == absl::Milliseconds(250));
  CHECK(p.Backoff(1) == absl::Milliseconds(500));
  CHECK(p.Backoff(2) == absl::Seconds(1));
  CHECK(p.Backoff(6) == absl::Seconds(10));     // capped
  CHECK(p.Backoff(5000) == absl::Seconds(10));  // no overflow
  CHECK(p.Describe() == "4 attempts, 250ms backoff growing x2 up to 10s");

  int calls = 0;
  std::vector<absl::Duration> waits;
  auto wait = [&](absl::Duration d) {
    waits.push_back(d);
    return true;
  };
  // Unavailable every time: max_attempts calls, the waits between them, the last status back.
  auto down = RetryCall<int>(
      p, "test",
      [&]() -> absl::StatusOr<int> {
        ++calls;
        return absl::UnavailableError(absl::StrCat("down ", calls));
      },
      wait);
  CHECK(calls == 4);
  CHECK(waits == std::vector<absl::Duration>{absl::Milliseconds(250), absl::Milliseconds(500),
                                             absl::Seconds(1)});
  CHECK(down.status().message() == "down 4");
  // Succeeds on the third attempt.
  calls = 0;
  waits.clear();
  auto third = RetryCall<int>(
      p, "test",
      [&]() -> absl::StatusOr<int> {
        if (++calls < 3) return absl::UnavailableError("restarting");
        return 42;
      },
      wait);
  CHECK(third.ok());
  CHECK(calls == 3);
  CHECK(waits.size() == 2);
  // A failure the policy does not retry: one call.
  calls = 0;
  auto refused = RetryCall<int>(
      p, "test",
      [&]() -> absl::StatusOr<int> {
        ++calls;
        return absl::FailedPreconditionError("lacks avx2");
      },
      wait);
  CHECK(calls == 1);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  // The wait gives up (stopping, or a deadline would pass): no more calls.
  calls = 0;
  auto cut = RetryCall<int>(
      p, "test",
      [&]() -> absl::StatusOr<int> {
        ++calls;
        return absl::DeadlineExceededError("no answer");
      },
      [](absl::Duration) { return false; });
  CHECK(calls == 1);
  CHECK(cut.status().code() == absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace livemig
