// GrpcAgentClientFactory's channel cache: every channel over one credentials object (one
// certificate watcher thread, not one per agent), channels unused for the idle window dropped,
// and the least recently used dropped beyond the count.
#include "scheduler/agent_client.h"

#include <dirent.h>

#include <catch2/catch.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "testing/run_command.h"

namespace livemig::sched {
namespace {

// The threads of this process now.
int ThreadCount() {
  DIR* d = opendir("/proc/self/task");
  REQUIRE(d != nullptr);
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

std::string Host(int i) { return absl::StrCat("host-", i); }
std::string Address(int i) { return absl::StrCat("127.0.0.1:", 1 + i); }  // nothing listens

GrpcAgentClientFactory::Options Plaintext(FakeClock* clock) {
  GrpcAgentClientFactory::Options o;
  o.tls.insecure = true;
  o.deadline = absl::Seconds(2);
  o.clock = clock;
  return o;
}

TEST_CASE("agent channels share one credentials object: no thread per agent") {
  const std::string pki = testing::MakeTempDir("pki");
  const std::string script = testing::RunfilePath("deploy/pki.sh");
  for (const std::string& args :
       {absl::StrCat("init ", pki), absl::StrCat("issue ", pki, " sched")}) {
    auto out = testing::RunCommand(absl::StrCat("bash ", script, " ", args));
    INFO(out.status().ToString());
    REQUIRE(out.ok());
  }
  GrpcAgentClientFactory::Options o;
  o.tls = {pki + "/ca.pem", pki + "/sched.pem", pki + "/sched.key"};
  GrpcAgentClientFactory factory(o);
  // The first channel starts what gRPC starts once per process, and the certificate watcher.
  REQUIRE(factory.ForHost(Host(0), Address(0)) != nullptr);
  const int before = ThreadCount();
  for (int i = 1; i <= 40; ++i) REQUIRE(factory.ForHost(Host(i), Address(i)) != nullptr);
  const int after = ThreadCount();
  std::cout << "threads: " << before << " with 1 agent channel, " << after << " with 41"
            << std::endl;
  CHECK(factory.CachedChannels() == 41);
  CHECK(after - before <= 2);  // was one certificate-watcher thread per channel: +40
}

TEST_CASE("an agent channel unused for the idle window is dropped; a call counts as use") {
  FakeClock clock;
  auto o = Plaintext(&clock);
  o.channel_idle = absl::Minutes(10);
  GrpcAgentClientFactory factory(o);
  auto c1 = factory.ForHost(Host(1), Address(1));
  auto c2 = factory.ForHost(Host(2), Address(2));
  clock.Advance(absl::Minutes(9));
  CHECK(factory.ForHost(Host(1), Address(1)) == c1);  // 9 minutes idle: kept, and used now
  clock.Advance(absl::Minutes(1) + absl::Seconds(1));
  // host-2: 10 min 1 s since its last use, dropped at the next ForHost; host-1: 1 min 1 s.
  auto c3 = factory.ForHost(Host(3), Address(3));
  CHECK_FALSE(factory.IsCached(Host(2), Address(2)));
  CHECK(factory.IsCached(Host(1), Address(1)));
  CHECK(factory.CachedChannels() == 2);
  // The caller that still holds the dropped client can use it (nothing listens: Unavailable).
  CHECK(c2->GetHostInfo().status().code() == absl::StatusCode::kUnavailable);
  // The next ForHost for it makes a new channel.
  auto c2b = factory.ForHost(Host(2), Address(2));
  CHECK(c2b != c2);
  // A call through a held client keeps its channel: host-3 is called at 9 min, so at 15 min it
  // is still cached though nobody asked the factory for it since.
  clock.Advance(absl::Minutes(9));
  CHECK(c3->GetHostInfo().status().code() == absl::StatusCode::kUnavailable);
  clock.Advance(absl::Minutes(6));
  factory.ForHost(Host(4), Address(4));
  CHECK(factory.IsCached(Host(3), Address(3)));
  CHECK(factory.ForHost(Host(3), Address(3)) == c3);
  CHECK_FALSE(factory.IsCached(Host(1), Address(1)));  // last used 16 min 1 s ago
  CHECK_FALSE(factory.IsCached(Host(2), Address(2)));  // c2b: 15 min
  // An agent that moved: the new address gets its own channel; the old one ages out.
  auto moved = factory.ForHost(Host(3), Address(33));
  CHECK(moved != c3);
  CHECK(factory.IsCached(Host(3), Address(3)));
  clock.Advance(absl::Minutes(10) + absl::Seconds(1));
  CHECK(factory.ForHost(Host(3), Address(33)) != moved);  // idle too: a new one
  CHECK_FALSE(factory.IsCached(Host(3), Address(3)));
  CHECK(factory.CachedChannels() == 1);
}

TEST_CASE("beyond the channel count the least recently used agent channel is dropped") {
  FakeClock clock;
  auto o = Plaintext(&clock);
  o.max_channels = 3;
  GrpcAgentClientFactory factory(o);
  std::shared_ptr<AgentClient> c[6];
  for (int i = 1; i <= 3; ++i) {
    c[i] = factory.ForHost(Host(i), Address(i));
    clock.Advance(absl::Seconds(1));
  }
  CHECK(factory.ForHost(Host(1), Address(1)) == c[1]);  // host-1 used last now: host-2 is LRU
  clock.Advance(absl::Seconds(1));
  c[4] = factory.ForHost(Host(4), Address(4));
  CHECK(factory.CachedChannels() == 3);
  CHECK_FALSE(factory.IsCached(Host(2), Address(2)));
  for (int i : {1, 3, 4}) CHECK(factory.IsCached(Host(i), Address(i)));
  // A call is a use too: host-3 called, then host-5 added: host-1 is now the LRU.
  clock.Advance(absl::Seconds(1));
  CHECK(c[3]->GetHostInfo().status().code() == absl::StatusCode::kUnavailable);
  clock.Advance(absl::Seconds(1));
  c[5] = factory.ForHost(Host(5), Address(5));
  CHECK(factory.CachedChannels() == 3);
  CHECK_FALSE(factory.IsCached(Host(1), Address(1)));
  for (int i : {3, 4, 5}) CHECK(factory.IsCached(Host(i), Address(i)));
  CHECK(factory.ForHost(Host(3), Address(3)) == c[3]);
}

}  // namespace
}  // namespace livemig::sched
