#include "testing/raw_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace livemig::testing {

absl::StatusOr<int> RawConnect(int port, const std::string& source) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  if (!source.empty()) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    inet_pton(AF_INET, source.c_str(), &src.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
      const int e = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("bind ", source, ": ", strerror(e)));
    }
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    const int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port, ": ", strerror(e)));
  }
  return fd;
}

bool RawSend(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

absl::StatusOr<RawReply> RawRead(int fd, absl::Duration deadline) {
  const absl::Time end = absl::Now() + deadline;
  std::string in;
  RawReply r;
  size_t header_end = std::string::npos;
  size_t want = std::string::npos;  // total bytes once the length is known
  char buf[16384];
  while (true) {
    if (header_end == std::string::npos) {
      header_end = in.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        std::vector<std::string> lines = absl::StrSplit(in.substr(0, header_end), "\r\n");
        std::vector<std::string> first = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
        if (first.size() < 2 || !absl::SimpleAtoi(first[1], &r.status)) {
          return absl::DataLossError("not an HTTP status line: " + lines[0]);
        }
        for (size_t i = 1; i < lines.size(); ++i) {
          const size_t colon = lines[i].find(':');
          if (colon == std::string::npos) continue;
          r.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
              std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
        }
        size_t length = 0;
        if (auto it = r.headers.find("content-length");
            it != r.headers.end() && absl::SimpleAtoi(it->second, &length)) {
          want = header_end + 4 + length;
        }
      }
    }
    if (want != std::string::npos && in.size() >= want) break;
    const absl::Duration left = end - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("no complete answer within ",
                                                      absl::FormatDuration(deadline), " (",
                                                      in.size(), " bytes read)"));
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) continue;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {  // closed (or reset): what arrived is the answer
      if (header_end == std::string::npos) {
        return absl::UnavailableError(absl::StrCat("the connection closed after ", in.size(),
                                                   " bytes, before an answer's headers"));
      }
      break;
    }
    in.append(buf, static_cast<size_t>(n));
  }
  r.body = in.substr(header_end + 4,
                     want == std::string::npos ? std::string::npos : want - header_end - 4);
  return r;
}

absl::StatusOr<RawReply> RawExchange(int port, const std::string& head, absl::Duration deadline) {
  auto fd = RawConnect(port);
  if (!fd.ok()) return fd.status();
  absl::StatusOr<RawReply> r = absl::UnavailableError("send failed");
  if (RawSend(*fd, head)) r = RawRead(*fd, deadline);
  close(*fd);
  return r;
}

}  // namespace livemig::testing
