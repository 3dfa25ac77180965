#include "cloudctl/config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace livemig::cloudctl {
namespace {

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

const char* NonEmpty(const char* v) { return v != nullptr && *v != '\0' ? v : nullptr; }

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ParseConfig(const std::string& text,
                                                               const std::string& path) {
  static const std::set<std::string> kKeys = {"server",  "token", "requester",
                                              "timeout", "ca",    "server-name"};
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    line = Trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') continue;  // an INI section header
    const auto eq = line.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": expected `key = value`, got `", line, "`"));
    }
    std::string key = Trim(line.substr(0, eq));
    std::string value = Trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (kKeys.count(key) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": unknown key '", key,
                       "' (known: server, token, requester, timeout, ca, server-name)"));
    }
    out[key] = value;
  }
  return out;
}

std::string HostOfTarget(const std::string& target) {
  std::string t = target;
  for (const char* scheme : {"dns:", "ipv4:", "ipv6:"}) {
    if (t.rfind(scheme, 0) == 0) {
      t = t.substr(strlen(scheme));
      break;
    }
  }
  if (t.rfind("//", 0) == 0) {  // dns://authority/host:port
    const auto slash = t.find('/', 2);
    t = slash == std::string::npos ? "" : t.substr(slash + 1);
  }
  if (!t.empty() && t[0] == '[') {
    const auto close = t.find(']');
    return close == std::string::npos ? t.substr(1) : t.substr(1, close - 1);
  }
  const auto colon = t.find(':');
  if (colon != std::string::npos && t.find(':', colon + 1) == std::string::npos) {
    return t.substr(0, colon);
  }
  return t;  // no port, or a bare IPv6 address
}

std::string NormalizeTarget(const std::string& address) {
  if (!address.empty() && address[0] == '/') return "unix:" + address;
  return address;
}

absl::StatusOr<Settings> ResolveSettings(const Flags& flags,
                                         const std::function<const char*(const char*)>& getenv) {
  Settings s;
  std::map<std::string, std::string> file;
  std::string path = flags.config;
  const bool explicit_path = !path.empty();
  if (!explicit_path) {
    if (const char* xdg = NonEmpty(getenv("XDG_CONFIG_HOME"))) {
      path = absl::StrCat(xdg, "/livemig/cloudctl.conf");
    } else if (const char* home = NonEmpty(getenv("HOME"))) {
      path = absl::StrCat(home, "/.config/livemig/cloudctl.conf");
    }
  }
  if (!path.empty()) {
    std::ifstream in(path);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      auto parsed = ParseConfig(text.str(), path);
      if (!parsed.ok()) return parsed.status();
      file = *std::move(parsed);
      s.config_path = path;
    } else if (explicit_path) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read the config file ", path, " given with --config"));
    }
  }
  const std::string in_file = absl::StrCat("the config file ", s.config_path);
  if (!flags.server.empty()) {
    s.server = flags.server;
    s.server_origin = "--server";
  } else if (const char* env = NonEmpty(getenv("LIVEMIG_SERVER"))) {
    s.server = env;
    s.server_origin = "LIVEMIG_SERVER";
  } else if (file.count("server") && !file["server"].empty()) {
    s.server = file["server"];
    s.server_origin = in_file;
  } else {
    s.server = kDefaultServer;
    s.server_origin = "the default";
  }
  s.server = NormalizeTarget(s.server);
  if (s.server.rfind("unix:", 0) == 0) {
    std::string sock = s.server.substr(5);
    if (sock.rfind("//", 0) == 0) sock = sock.substr(2);
    if (sock.size() > 107) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the scheduler's socket path from ", s.server_origin, " is ", sock.size(),
          " bytes, longer than the 107 a Unix socket path may have: use a shorter path"));
    }
  }

  if (!flags.token.empty()) {
    s.token = flags.token;
  } else if (const char* env = NonEmpty(getenv("LIVEMIG_TOKEN"))) {
    s.token = env;
  } else if (file.count("token")) {
    s.token = file["token"];
  }

  if (!flags.requester.empty()) {
    s.requester = flags.requester;
  } else if (const char* env = NonEmpty(getenv("LIVEMIG_USER"))) {
    s.requester = env;
  } else if (file.count("requester") && !file["requester"].empty()) {
    s.requester = file["requester"];
  } else if (const char* user = NonEmpty(getenv("USER"))) {
    s.requester = user;
  }

  if (!flags.server_name.empty()) {
    s.server_name = flags.server_name;
  } else if (const char* env = NonEmpty(getenv("LIVEMIG_SERVER_NAME"))) {
    s.server_name = env;
  } else if (file.count("server-name")) {
    s.server_name = file["server-name"];
  }

  if (!flags.ca.empty()) {
    s.ca_path = flags.ca;
    s.ca_origin = "--ca";
  } else if (const char* env = NonEmpty(getenv("LIVEMIG_CA"))) {
    s.ca_path = env;
    s.ca_origin = "LIVEMIG_CA";
  } else if (file.count("ca") && !file["ca"].empty()) {
    s.ca_path = file["ca"];
    s.ca_origin = in_file;
  }
  // A unix: server never uses TLS (the socket's permissions guard it), so its CA is not read.
  if (!s.ca_path.empty() && s.server.rfind("unix:", 0) != 0) {
    std::ifstream in(s.ca_path);
    std::stringstream text;
    if (in) text << in.rdbuf();
    if (!in || in.bad()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot read the CA file ", s.ca_path,
                                                     " given with ", s.ca_origin, ": ",
                                                     strerror(errno)));
    }
    s.ca_pem = text.str();
    if (s.ca_pem.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the CA file ", s.ca_path, " given with ", s.ca_origin,
          " holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA certificate that "
          "issued the scheduler's API certificate, e.g. ca.pem of deploy/pki.sh"));
    }
  }

  if (flags.timeout_s) {
    s.timeout_s = *flags.timeout_s;
  } else if (file.count("timeout")) {
    if (!absl::SimpleAtod(file["timeout"], &s.timeout_s)) {
      return absl::InvalidArgumentError(
          absl::StrCat(in_file, ": timeout '", file["timeout"], "' is not a number of seconds"));
    }
  }
  // At most a day: larger values (and inf) would overflow the per-call deadline.
  if (!(s.timeout_s > 0) || !(s.timeout_s <= kMaxTimeoutS)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--timeout: the timeout must be a positive number of seconds, at most ",
                     kMaxTimeoutS, ", got ", s.timeout_s));
  }
  return s;
}

}  // namespace livemig::cloudctl
