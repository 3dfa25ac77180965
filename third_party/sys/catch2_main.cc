// The Catch2 main, compiled once for every test (it takes ~20 s to compile).
//
// Tests are clients of servers that may close a connection while the client still writes (the
// HTTP server answers 413/401 before reading a body, then closes): a write to such a socket must
// fail with EPIPE, as in curl or any real client, not kill the test with SIGPIPE.
#include <csignal>
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  std::signal(SIGPIPE, SIG_IGN);
  return Catch::Session().run(argc, argv);
}
