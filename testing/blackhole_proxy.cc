#include "testing/blackhole_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace livemig::testing {
namespace {

constexpr size_t kMaxBuffered = 1 << 20;  // per direction

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

void NonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

struct Conn {
  int client = -1, upstream = -1;
  std::string to_upstream, to_client;
  bool closed = false;
  void Close() {
    if (client >= 0) close(client);
    if (upstream >= 0) close(upstream);
    client = upstream = -1;
    closed = true;
  }
};

// Reads what `from` has into `buf`; false on EOF or error.
bool Pump(int from, std::string* buf) {
  char chunk[65536];
  while (buf->size() < kMaxBuffered) {
    ssize_t n = read(from, chunk, sizeof(chunk));
    if (n > 0) {
      buf->append(chunk, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
  return true;
}

// Writes what it can of `buf` to `to`; returns bytes written, or -1 on error.
int64_t Drain(int to, std::string* buf) {
  int64_t total = 0;
  while (!buf->empty()) {
    ssize_t n = send(to, buf->data(), buf->size(), MSG_NOSIGNAL);
    if (n > 0) {
      buf->erase(0, static_cast<size_t>(n));
      total += n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
    return -1;
  }
  return total;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BlackholeProxy>> BlackholeProxy::Start(int target_port,
                                                                      int listen_port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = Loopback(listen_port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 64) != 0) {
    const std::string err = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot listen on 127.0.0.1:", listen_port, ": ", err));
  }
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  NonBlocking(fd);
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  return std::unique_ptr<BlackholeProxy>(
      new BlackholeProxy(fd, ntohs(a.sin_port), target_port, pipe_fds[0], pipe_fds[1]));
}

BlackholeProxy::BlackholeProxy(int listen_fd, int port, int target_port, int wake_r, int wake_w)
    : listen_fd_(listen_fd),
      port_(port),
      target_port_(target_port),
      wake_r_(wake_r),
      wake_w_(wake_w) {
  thread_ = std::thread([this] { Loop(); });
}

BlackholeProxy::~BlackholeProxy() {
  stop_ = true;
  Wake();
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_r_);
  close(wake_w_);
}

void BlackholeProxy::SetBlackhole(bool on) {
  blackhole_ = on;
  Wake();
}

void BlackholeProxy::Wake() {
  char c = 1;
  (void)!write(wake_w_, &c, 1);
}

void BlackholeProxy::Loop() {
  std::vector<Conn> conns;
  while (!stop_) {
    const bool hole = blackhole_;
    std::vector<pollfd> fds = {{wake_r_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    // fds[2 + 2*i] is conns[i].client, fds[3 + 2*i] its upstream (only when forwarding).
    if (!hole) {
      for (auto& c : conns) {
        short ce = 0, ue = 0;
        if (c.to_upstream.size() < kMaxBuffered) ce |= POLLIN;
        if (!c.to_client.empty()) ce |= POLLOUT;
        if (c.to_client.size() < kMaxBuffered) ue |= POLLIN;
        if (!c.to_upstream.empty()) ue |= POLLOUT;
        fds.push_back({c.client, ce, 0});
        fds.push_back({c.upstream, ue, 0});
      }
    }
    if (poll(fds.data(), fds.size(), 200) < 0 && errno != EINTR) break;
    if (fds[0].revents & POLLIN) {
      char buf[64];
      while (read(wake_r_, buf, sizeof(buf)) > 0) {
      }
    }
    if (fds[1].revents & POLLIN) {
      // Accept even while black-holed: a dropped port refuses nothing, it just never answers.
      while (true) {
        int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) break;
        int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in t = Loopback(target_port_);
        if (u < 0 || connect(u, reinterpret_cast<sockaddr*>(&t), sizeof(t)) != 0) {
          if (u >= 0) close(u);
          close(c);
          continue;
        }
        NonBlocking(u);
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        Conn conn;
        conn.client = c;
        conn.upstream = u;
        conns.push_back(std::move(conn));
        ++accepted_;
      }
    }
    if (!hole) {
      const size_t polled = (fds.size() - 2) / 2;
      for (size_t i = 0; i < polled && i < conns.size(); ++i) {
        Conn& c = conns[i];
        const short cr = fds[2 + 2 * i].revents, ur = fds[3 + 2 * i].revents;
        bool ok = true;
        if (cr & (POLLIN | POLLHUP | POLLERR)) ok = Pump(c.client, &c.to_upstream) && ok;
        if (ur & (POLLIN | POLLHUP | POLLERR)) ok = Pump(c.upstream, &c.to_client) && ok;
        const int64_t a = Drain(c.upstream, &c.to_upstream);
        const int64_t b = Drain(c.client, &c.to_client);
        if (a < 0 || b < 0) ok = false;
        forwarded_ += (a > 0 ? a : 0) + (b > 0 ? b : 0);
        if (!ok) c.Close();
      }
      std::vector<Conn> open;
      for (auto& c : conns) {
        if (!c.closed) open.push_back(std::move(c));
      }
      conns.swap(open);
    }
  }
  for (auto& c : conns) c.Close();
}

}  // namespace livemig::testing
