// A TCP proxy on 127.0.0.1 for partition tests: forwards every connection to a target port on
// 127.0.0.1 until it is switched to black-holing, which models a firewall that silently drops a
// port's packets: nothing is read or forwarded any more, in either direction, but nothing is
// closed or refused either (new connections are accepted and then hang). Switching back resumes
// forwarding on the connections that were kept open.
//
//   auto proxy = BlackholeProxy::Start(agent_port);     // listens on 127.0.0.1:proxy->port()
//   proxy->SetBlackhole(true);  ...  proxy->SetBlackhole(false);
#ifndef LIVEMIG_TESTING_BLACKHOLE_PROXY_H_
#define LIVEMIG_TESTING_BLACKHOLE_PROXY_H_

#include <atomic>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"

namespace livemig::testing {

class BlackholeProxy {
 public:
  // Listens on 127.0.0.1:`listen_port` (0: a free port) and forwards to 127.0.0.1:`target_port`.
  static absl::StatusOr<std::unique_ptr<BlackholeProxy>> Start(int target_port,
                                                               int listen_port = 0);
  ~BlackholeProxy();  // stops the thread and closes every connection
  BlackholeProxy(const BlackholeProxy&) = delete;
  BlackholeProxy& operator=(const BlackholeProxy&) = delete;

  int port() const { return port_; }
  void SetBlackhole(bool on);
  bool blackholed() const { return blackhole_; }
  // Connections accepted so far, and bytes forwarded (both directions) so far.
  int connections() const { return accepted_; }
  int64_t bytes_forwarded() const { return forwarded_; }

 private:
  BlackholeProxy(int listen_fd, int port, int target_port, int wake_r, int wake_w);
  void Loop();
  void Wake();

  const int listen_fd_, port_, target_port_, wake_r_, wake_w_;
  std::atomic<bool> blackhole_{false}, stop_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int64_t> forwarded_{0};
  std::thread thread_;
};

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_BLACKHOLE_PROXY_H_
