#include "common/signals.h"

#include <pthread.h>
#include <signal.h>

namespace livemig {
namespace {

sigset_t ShutdownSignals() {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  return sigs;
}

}  // namespace

void BlockShutdownSignals() {
  const sigset_t sigs = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
}

int WaitForShutdown(const std::function<void()>& on_hangup) {
  const sigset_t sigs = ShutdownSignals();
  while (true) {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig != SIGHUP) return sig;
    on_hangup();
  }
}

}  // namespace livemig
