// The daemons' signals: SIGTERM, SIGINT and SIGHUP are blocked in every thread and taken by one
// thread with sigwait, never handled asynchronously.
//
//   BlockShutdownSignals();  // in main(), before any thread starts
//   ...
//   const int sig = WaitForShutdown([&] { /* SIGHUP: reload */ });  // SIGTERM or SIGINT
#ifndef LIVEMIG_COMMON_SIGNALS_H_
#define LIVEMIG_COMMON_SIGNALS_H_

#include <functional>

namespace livemig {

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and in the threads it starts afterwards.
void BlockShutdownSignals();

// Waits for SIGTERM or SIGINT and returns its number; runs `on_hangup` for each SIGHUP meanwhile.
int WaitForShutdown(const std::function<void()>& on_hangup);

}  // namespace livemig

#endif  // LIVEMIG_COMMON_SIGNALS_H_
