// Size: the shared-volume model of the agent (file, block, iSCSI with multipath, DRBD): each
// disk described, checked, prepared, held and released, with its undo record; the DRBD and iSCSI
// handling could each be a file of their own.
#include "driver/volumes.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "driver/host_files.h"

namespace livemig::driver {
namespace {

std::string Trim(absl::string_view s) { return std::string(absl::StripAsciiWhitespace(s)); }

// "<res>" of /dev/drbd/by-res/<res>[/<volume>].
std::string ByResResource(const std::string& path) {
  static const std::regex kByRes("^/dev/drbd/by-res/([^/]+)(/[0-9]+)?$");
  std::smatch m;
  return std::regex_match(path, m, kByRes) ? std::string(m[1]) : "";
}

// The minor of /dev/drbdN; -1 otherwise.
int DrbdMinor(const std::string& path) {
  static const std::regex kDrbd("^/dev/drbd([0-9]+)$");
  std::smatch m;
  int minor = -1;
  if (std::regex_match(path, m, kDrbd)) (void)absl::SimpleAtoi(std::string(m[1]), &minor);
  return minor;
}

// A TCP connect to host:port within 3 s.
absl::Status TcpReach(const std::string& portal) {
  const size_t colon = portal.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("portal '", portal, "' has no port"));
  }
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  const std::string host = portal.substr(0, colon), port = portal.substr(colon + 1);
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  absl::Status st = absl::UnavailableError("no address");
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = poll(&p, 1, 3000) == 1 ? 0 : -1;
      int err = 0;
      socklen_t len = sizeof(err);
      if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
        errno = err;
        rc = -1;
      } else if (rc != 0) {
        errno = ETIMEDOUT;
      }
    }
    const int saved = errno;
    close(fd);
    if (rc == 0) {
      st = absl::OkStatus();
      break;
    }
    st = absl::UnavailableError(absl::StrCat("connect to ", portal, ": ", std::strerror(saved)));
  }
  freeaddrinfo(res);
  return st;
}

std::string DiskName(const v1::DomainDisk& d) {
  return d.target_dev().empty() ? d.source() : d.target_dev();
}

}  // namespace

std::string IscsiByPath(const std::string& portal, const std::string& target, uint32_t lun) {
  return absl::StrCat("/dev/disk/by-path/ip-", portal, "-iscsi-", target, "-lun-", lun);
}

absl::StatusOr<std::vector<VolumeSpec>> ParseVolumesFile(const std::string& text,
                                                         const std::string& path) {
  static const std::regex kName("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
  // An address, not a name: udev names the LUN's device after the session's address.
  static const std::regex kPortal(
      "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$");
  static const std::regex kIqn("^(iqn\\.|eui\\.|naa\\.)[A-Za-z0-9.:_-]{1,220}$");
  static const std::regex kDev("^/dev/[A-Za-z0-9._/:-]+$");
  std::vector<VolumeSpec> out;
  int n = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++n;
    std::string line = Trim(raw.substr(0, raw.find('#')));
    if (line.empty()) continue;
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, " line ", n, ": ", why,
          " (a volume is `<name> iscsi portal=<host:port> target=<iqn> lun=<n>` or `<name> drbd "
          "resource=<res> device=/dev/drbdN`)"));
    };
    std::vector<std::string> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.size() < 2) return bad("a volume needs a name and a kind");
    VolumeSpec v;
    v.name = words[0];
    if (!std::regex_match(v.name, kName)) {
      return bad(absl::StrCat("'", v.name, "' is not a volume name ([A-Za-z0-9._-], 1-64)"));
    }
    for (const auto& o : out) {
      if (o.name == v.name) return bad(absl::StrCat("volume '", v.name, "' is named twice"));
    }
    std::map<std::string, std::string> kv;
    for (size_t i = 2; i < words.size(); ++i) {
      const size_t eq = words[i].find('=');
      if (eq == std::string::npos || eq == 0) {
        return bad(absl::StrCat("'", words[i], "' is not key=value"));
      }
      kv[words[i].substr(0, eq)] = words[i].substr(eq + 1);
    }
    auto take = [&](const std::string& key) {
      auto it = kv.find(key);
      if (it == kv.end()) return std::string();
      std::string value = it->second;
      kv.erase(it);
      return value;
    };
    if (words[1] == "iscsi") {
      v.kind = v1::DISK_KIND_ISCSI;
      v.portal = take("portal");
      v.target = take("target");
      const std::string lun = take("lun");
      v.device = take("device");
      if (!std::regex_match(v.portal, kPortal)) {
        return bad(absl::StrCat("portal='", v.portal,
                                "' is not <IPv4 address>:<port> or [<IPv6 address>]:<port> (an "
                                "address: udev names the LUN's device after it, the same on "
                                "every host that logs in through it)"));
      }
      if (!std::regex_match(v.target, kIqn)) {
        return bad(absl::StrCat("target='", v.target, "' is not an iSCSI name (iqn.…)"));
      }
      if (!absl::SimpleAtoi(lun, &v.lun) || v.lun > 16383) {
        return bad(absl::StrCat("lun='", lun, "' is not a LUN number (0-16383)"));
      }
      if (v.device.empty()) v.device = IscsiByPath(v.portal, v.target, v.lun);
    } else if (words[1] == "drbd") {
      v.kind = v1::DISK_KIND_DRBD;
      v.resource = take("resource");
      v.device = take("device");
      if (!std::regex_match(v.resource, kName)) {
        return bad(absl::StrCat("resource='", v.resource, "' is not a DRBD resource name"));
      }
    } else {
      return bad(absl::StrCat("kind '", words[1], "' is neither iscsi nor drbd"));
    }
    if (!std::regex_match(v.device, kDev)) {
      return bad(absl::StrCat("device='", v.device, "' is not a path under /dev"));
    }
    if (!kv.empty()) return bad(absl::StrCat("unknown key '", kv.begin()->first, "'"));
    out.push_back(std::move(v));
  }
  return out;
}

DrbdState ParseDrbdState(const std::string& role, const std::string& cstate,
                         const std::string& dstate, const std::string& show) {
  DrbdState s;
  auto split = [](const std::string& text, std::string* mine, std::string* peer) {
    const std::string t = Trim(text);
    const size_t slash = t.find('/');
    *mine = t.substr(0, slash);
    if (slash != std::string::npos) *peer = t.substr(slash + 1);
  };
  split(role, &s.role, &s.peer_role);
  s.cstate = Trim(cstate);
  split(dstate, &s.disk, &s.peer_disk);
  static const std::regex kTwo("allow-two-primaries\\s*(yes)?\\s*;");
  std::smatch m;
  s.two_primaries = std::regex_search(show, m, kTwo);
  return s;
}

Volumes::Volumes(Options options, Runner run) : options_(std::move(options)), run_(std::move(run)) {
  if (!options_.reach) options_.reach = TcpReach;
}

absl::StatusOr<std::vector<VolumeSpec>> Volumes::Load(const std::string& path) {
  if (path.empty()) return std::vector<VolumeSpec>();
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the volumes file ", path, ": ", std::strerror(errno)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseVolumesFile(ss.str(), path);
}

std::string Volumes::Resolve(const std::string& path) const {
  char buf[PATH_MAX];
  const std::string full = options_.root + path;
  if (realpath(full.c_str(), buf) == nullptr) return "";
  std::string r = buf;
  if (!options_.root.empty()) {
    char rootbuf[PATH_MAX];
    if (realpath(options_.root.c_str(), rootbuf) == nullptr) return "";
    if (!absl::StartsWith(r, rootbuf)) return "";
    r = r.substr(strlen(rootbuf));
  }
  return r;
}

std::string Volumes::Wwid(const std::string& dev_path) const {
  const std::string real = Resolve(dev_path);
  if (real.empty() || !absl::StartsWith(real, "/dev/")) return "";
  const std::string base = real.substr(real.rfind('/') + 1);
  std::ifstream in(absl::StrCat(options_.root, "/sys/block/", base, "/device/wwid"));
  std::string id;
  std::getline(in, id);
  return Trim(id);
}

const VolumeSpec* Volumes::Find(const v1::DomainDisk& d) const {
  const std::string real = Resolve(d.source());
  for (const VolumeSpec& v : options_.specs) {
    if (d.source() == v.device) return &v;
    if (v.kind == v1::DISK_KIND_ISCSI && d.source() == IscsiByPath(v.portal, v.target, v.lun)) {
      return &v;
    }
    if (v.kind == v1::DISK_KIND_DRBD && ByResResource(d.source()) == v.resource) return &v;
    if (!real.empty() && Resolve(v.device) == real) return &v;
  }
  return nullptr;
}

const VolumeSpec* Volumes::Configured(const v1::DomainDisk& d) const {
  for (const VolumeSpec& v : options_.specs) {
    if (d.kind() == v1::DISK_KIND_ISCSI && v.kind == v1::DISK_KIND_ISCSI &&
        v.target == d.iscsi_target() && v.lun == d.iscsi_lun()) {
      return &v;
    }
    if (d.kind() == v1::DISK_KIND_DRBD && v.kind == v1::DISK_KIND_DRBD &&
        !d.drbd_resource().empty() && v.resource == d.drbd_resource()) {
      return &v;
    }
  }
  return nullptr;
}

void Volumes::Describe(v1::DomainDisk* d) const {
  if (d->type() != "block" && d->type() != "file") return;
  static const std::regex kByPath(
      "^/dev/disk/by-path/ip-(.+)-iscsi-((?:iqn|eui|naa)\\..+)-lun-([0-9]+)$");
  std::smatch m;
  if (const VolumeSpec* v = Find(*d)) {
    d->set_kind(v->kind);
    d->set_volume(v->name);
    d->set_shared(true);
    if (v->kind == v1::DISK_KIND_ISCSI) {
      d->set_iscsi_portal(v->portal);
      d->set_iscsi_target(v->target);
      d->set_iscsi_lun(v->lun);
    } else {
      d->set_drbd_resource(v->resource);
    }
  } else if (d->type() == "block" && std::regex_match(d->source(), m, kByPath)) {
    d->set_kind(v1::DISK_KIND_ISCSI);
    d->set_iscsi_portal(m[1]);
    d->set_iscsi_target(m[2]);
    uint32_t lun = 0;
    (void)absl::SimpleAtoi(std::string(m[3]), &lun);
    d->set_iscsi_lun(lun);
  } else if (d->type() == "block" &&
             (!ByResResource(d->source()).empty() || DrbdMinor(Resolve(d->source())) >= 0 ||
              DrbdMinor(d->source()) >= 0)) {
    d->set_kind(v1::DISK_KIND_DRBD);
    d->set_drbd_resource(ByResResource(d->source()));
  } else {
    return;  // a file, or another block device: its kind as DomainDisks set it
  }
  if (d->kind() == v1::DISK_KIND_ISCSI) {
    d->set_device_id(Wwid(d->source()));
  } else if (d->kind() == v1::DISK_KIND_DRBD) {
    const int minor = DrbdMinor(Resolve(d->source()));
    if (!d->drbd_resource().empty() && minor >= 0) {
      d->set_device_id(absl::StrCat("drbd:", d->drbd_resource(), "/", minor));
    }
  }
}

absl::StatusOr<DrbdState> Volumes::Drbd(const std::string& resource) const {
  const std::string r = ShellQuote(resource);
  ASSIGN_OR_RETURN(std::string out,
                   run_(absl::StrCat("drbdadm role ", r, " && echo @@ && drbdadm cstate ", r,
                                     " && echo @@ && drbdadm dstate ", r,
                                     " && echo @@ && { /lib/drbd/drbdsetup-84 show ", r,
                                     " 2>/dev/null || drbdsetup show ", r, "; }")));
  std::vector<std::string> parts = absl::StrSplit(out, "@@\n");
  if (parts.size() != 4) {
    return absl::InternalError(
        absl::StrCat("drbdadm printed what this agent cannot read for resource ", resource, ": ",
                     out.substr(0, 200)));
  }
  return ParseDrbdState(parts[0], parts[1], parts[2], parts[3]);
}

bool Volumes::LoggedIn(const std::string& portal, const std::string& target, uint32_t lun) const {
  return !Resolve(IscsiByPath(portal, target, lun)).empty();
}

std::string Volumes::PathMismatch(const v1::DomainDisk& d, const VolumeSpec& v) const {
  if (d.source() == v.device) return "";
  if (v.kind == v1::DISK_KIND_ISCSI && d.source() == IscsiByPath(v.portal, v.target, v.lun)) {
    return "";
  }
  if (v.kind == v1::DISK_KIND_DRBD) {
    if (ByResResource(d.source()) == v.resource) return "";
    const std::string real = Resolve(d.source());
    if (!real.empty() && real == Resolve(v.device)) return "";
  }
  return absl::StrCat("the guest's disk path ", d.source(), " is not ", options_.hostname,
                      "'s device for volume ", v.name, " (", v.device,
                      "): the guest would open another device there. Use one path on every "
                      "host");
}

namespace {
// What keeps a DRBD resource from the switch-over; none when it is ready.
std::vector<std::string> DrbdProblems(const DrbdState& st) {
  std::vector<std::string> missing;
  if (st.cstate != "Connected") {
    missing.push_back(
        absl::StrCat("is ", st.cstate.empty() ? "not up" : st.cstate, ", not Connected"));
  }
  if (st.disk != "UpToDate" || st.peer_disk != "UpToDate") {
    missing.push_back(
        absl::StrCat("has disks ", st.disk, "/", st.peer_disk, ", not UpToDate/UpToDate"));
  }
  if (!st.two_primaries) {
    missing.push_back(
        "does not allow two primaries (net { allow-two-primaries yes; }), which the "
        "switch-over needs");
  }
  return missing;
}
}  // namespace

std::optional<v1::CheckResult> Volumes::Check(const v1::DomainInfo& instance,
                                              const std::string& role) const {
  const std::string& h = options_.hostname;
  const std::string file =
      options_.volumes_file.empty() ? "(no --volumes-file)" : options_.volumes_file;
  std::vector<std::string> ok, bad;
  bool any = false;
  for (const v1::DomainDisk& d : instance.disks()) {
    const std::string name = DiskName(d);
    if (d.kind() == v1::DISK_KIND_ISCSI) {
      any = true;
      const VolumeSpec* mine = Configured(d);
      if (mine == nullptr) {
        bad.push_back(absl::StrCat(
            "disk ", name, " is iSCSI target ", d.iscsi_target(), " LUN ", d.iscsi_lun(),
            ", which ", h, "'s volumes file ", file, " does not list, so ", h,
            role == "destination" ? " may not log in to it"
                                  : " could not log out of it after the migration",
            ": add the volume there (deploy/README.md, \"Shared volumes\") and restart the "
            "agent"));
        continue;
      }
      if (role != "destination") continue;
      if (std::string m = PathMismatch(d, *mine); !m.empty()) {
        bad.push_back(absl::StrCat("disk ", name, ": ", m));
        continue;
      }
      if (LoggedIn(mine->portal, mine->target, mine->lun)) {
        const std::string here = Wwid(IscsiByPath(mine->portal, mine->target, mine->lun));
        if (!here.empty() && !d.device_id().empty() && here != d.device_id()) {
          bad.push_back(absl::StrCat("disk ", name, ": ", h, "'s LUN ", mine->lun, " of ",
                                     mine->target, " has WWID ", here, ", the source's ",
                                     d.device_id(), ": not the same device"));
        } else {
          ok.push_back(absl::StrCat(name, " (iSCSI ", mine->target, " LUN ", mine->lun,
                                    ", logged in already", here.empty() ? "" : ", WWID ", here,
                                    ")"));
        }
        continue;
      }
      if (absl::Status r = options_.reach(mine->portal); !r.ok()) {
        bad.push_back(absl::StrCat("disk ", name, ": ", h, " cannot reach iSCSI portal ",
                                   mine->portal, " of ", mine->target, " (", r.message(), ")"));
      } else {
        ok.push_back(absl::StrCat(name, " (iSCSI ", mine->target, " LUN ", mine->lun, ": ", h,
                                  " reaches ", mine->portal, " and logs in before the transfer)"));
      }
    } else if (d.kind() == v1::DISK_KIND_DRBD) {
      any = true;
      const VolumeSpec* mine = Configured(d);
      if (d.drbd_resource().empty() || mine == nullptr) {
        bad.push_back(
            absl::StrCat("disk ", name, " is DRBD ",
                         d.drbd_resource().empty()
                             ? absl::StrCat("device ", d.source(), " of no configured resource")
                             : absl::StrCat("resource ", d.drbd_resource()),
                         ", which ", h, "'s volumes file ", file, " does not list: add it there"));
        continue;
      }
      auto st = Drbd(mine->resource);
      if (!st.ok()) {
        bad.push_back(absl::StrCat("disk ", name, ": cannot read DRBD resource ", mine->resource,
                                   " on ", h, ": ", st.status().message()));
        continue;
      }
      std::vector<std::string> missing = DrbdProblems(*st);
      if (role == "destination") {
        if (std::string m = PathMismatch(d, *mine); !m.empty()) missing.push_back(m);
      }
      if (!missing.empty()) {
        bad.push_back(absl::StrCat("disk ", name, ": DRBD resource ", mine->resource, " on ", h,
                                   " ", absl::StrJoin(missing, "; ")));
      } else {
        ok.push_back(absl::StrCat(name, " (DRBD ", mine->resource, ": Connected, UpToDate/",
                                  "UpToDate, two primaries allowed, ", st->role, " here)"));
      }
    } else if (d.kind() == v1::DISK_KIND_BLOCK) {
      any = true;
      if (role != "destination") continue;
      const std::string here = Resolve(d.source()).empty() ? "" : Wwid(d.source());
      if (!here.empty() && here == d.device_id()) {
        ok.push_back(
            absl::StrCat(name, " (block device ", d.source(), ", WWID ", here, " on both hosts)"));
      } else {
        bad.push_back(absl::StrCat(
            "disk ", name, " is block device ", d.source(),
            ", neither an iSCSI LUN nor a DRBD "
            "volume this system hands over, and ",
            h,
            Resolve(d.source()).empty() ? " has no such device"
                                        : absl::StrCat(" has it with WWID '", here,
                                                       "', the source's '", d.device_id(), "'"),
            ": the guest would lose its disk. Put it on a configured volume, or migrate it "
            "offline"));
      }
    }
  }
  if (!any) return std::nullopt;
  v1::CheckResult c;
  c.set_host(h);
  c.set_name("shared_volumes");
  c.set_passed(bad.empty());
  if (!bad.empty()) {
    c.set_reason(absl::StrJoin(bad, "; "));
  } else if (ok.empty()) {
    c.set_reason(absl::StrCat("the ", role, " ", h, " has nothing to prepare for the disks"));
  } else {
    c.set_reason(absl::StrCat(role, " ", h, ": ", absl::StrJoin(ok, "; ")));
  }
  return c;
}

std::string Volumes::RecordPath(const std::string& migration_id) const {
  return absl::StrCat(options_.state_dir, "/volumes/", migration_id, ".list");
}

absl::Status Volumes::IscsiLogin(const std::string& portal, const std::string& target,
                                 uint32_t lun) {
  const std::string node =
      absl::StrCat("iscsiadm -m node -T ", ShellQuote(target), " -p ", ShellQuote(portal));
  // A node record first, made only when missing (`-o new` would reset one an operator set up,
  // e.g. with CHAP), then the login; a session that exists already (exit 15) is rescanned, so
  // that a LUN mapped since shows up.
  auto out =
      run_(absl::StrCat("{ ", node, " >/dev/null 2>&1 || ", node, " -o new >/dev/null; } && { ",
                        node, " --login; rc=$?; [ $rc = 0 ] || { [ $rc = 15 ] && ", node,
                        " --rescan >/dev/null; }; } && "
                        "{ udevadm settle -t 5 || true; }"));
  if (!out.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot log in to iSCSI target ", target, " at ",
                                               portal, " on ", options_.hostname, ": ",
                                               out.status().message()));
  }
  const std::string dev = IscsiByPath(portal, target, lun);
  const absl::Time deadline = absl::Now() + options_.device_timeout;
  while (!LoggedIn(portal, target, lun)) {
    if (absl::Now() > deadline) {
      return absl::UnavailableError(absl::StrCat(
          "logged in to iSCSI target ", target, " at ", portal, " on ", options_.hostname,
          ", but LUN ", lun, " did not appear as ", dev, " within ",
          absl::FormatDuration(options_.device_timeout), ": is the LUN exported to this host?"));
    }
    (void)run_("udevadm settle -t 2 || true");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // paced poll, deadline above
  }
  return absl::OkStatus();
}

absl::Status Volumes::IscsiLogout(const std::string& portal, const std::string& target,
                                  uint32_t lun) {
  // A session serves every LUN of its target: kept while another of them is present here.
  const std::string prefix = absl::StrCat("ip-", portal, "-iscsi-", target, "-lun-");
  if (DIR* dir = opendir(absl::StrCat(options_.root, "/dev/disk/by-path").c_str())) {
    std::string other;
    while (dirent* e = readdir(dir)) {
      const std::string n = e->d_name;
      if (absl::StartsWith(n, prefix) && n != absl::StrCat(prefix, lun) &&
          !absl::StrContains(n, "-part")) {
        other = n;
      }
    }
    closedir(dir);
    if (!other.empty()) return absl::OkStatus();
  }
  // No session is success too (iscsiadm exits 21: no matching session).
  auto out =
      run_(absl::StrCat("iscsiadm -m node -T ", ShellQuote(target), " -p ", ShellQuote(portal),
                        " --logout; rc=$?; [ $rc = 0 ] || [ $rc = 21 ]"));
  if (!out.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot log out of iSCSI target ", target, " at ",
                                               portal, " on ", options_.hostname, ": ",
                                               out.status().message()));
  }
  return absl::OkStatus();
}

absl::Status Volumes::DrbdRole(const std::string& resource, bool primary) {
  const std::string want = primary ? "Primary" : "Secondary";
  const absl::Time deadline = absl::Now() + options_.release_timeout;
  while (true) {
    ASSIGN_OR_RETURN(DrbdState st, Drbd(resource));
    if (st.role == want) return absl::OkStatus();
    auto out = run_(absl::StrCat("drbdadm ", primary ? "primary " : "secondary ",
                                 ShellQuote(resource), " 2>&1"));
    if (out.ok()) return absl::OkStatus();
    // Demoting waits for Xen's block backend to close the device after the domain left.
    if (primary || absl::Now() > deadline) {
      return absl::UnavailableError(absl::StrCat("cannot make DRBD resource ", resource, " ", want,
                                                 " on ", options_.hostname, ": ",
                                                 out.status().message()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // paced retry, bounded above
  }
}

absl::StatusOr<std::vector<std::string>> Volumes::Attach(const std::string& migration_id,
                                                         const v1::DomainInfo& instance) {
  const std::string record = RecordPath(migration_id);
  std::vector<std::string> done = ReadLines(record);
  auto remember = [&](const std::string& line) -> absl::Status {
    if (std::find(done.begin(), done.end(), line) != done.end()) return absl::OkStatus();
    done.push_back(line);
    mkdir(absl::StrCat(options_.state_dir, "/volumes").c_str(), 0700);
    return WriteLines(record, done);
  };
  std::vector<std::string> attached;
  for (const v1::DomainDisk& d : instance.disks()) {
    if (d.kind() == v1::DISK_KIND_ISCSI) {
      const VolumeSpec* mine = Configured(d);
      if (mine == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(options_.hostname, " may not log in to iSCSI target ", d.iscsi_target(),
                         " LUN ", d.iscsi_lun(), ": its volumes file does not list it"));
      }
      if (std::string m = PathMismatch(d, *mine); !m.empty()) {
        return absl::FailedPreconditionError(absl::StrCat("disk ", DiskName(d), ": ", m));
      }
      const std::string line =
          absl::StrCat("iscsi ", mine->portal, " ", mine->target, " ", mine->lun);
      const bool mine_already = std::find(done.begin(), done.end(), line) != done.end();
      if (LoggedIn(mine->portal, mine->target, mine->lun)) {
        // By this migration (a repeated call), or someone else's session, left alone.
        if (mine_already) attached.push_back(absl::StrCat("iscsi:", mine->target, ":", mine->lun));
        continue;
      }
      RETURN_IF_ERROR(remember(line));  // recorded before it is done: a rollback undoes it
      RETURN_IF_ERROR(IscsiLogin(mine->portal, mine->target, mine->lun));
      const std::string here = Wwid(IscsiByPath(mine->portal, mine->target, mine->lun));
      if (!here.empty() && !d.device_id().empty() && here != d.device_id()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "iSCSI target ", mine->target, " LUN ", mine->lun, " on ", options_.hostname,
            " has WWID ", here, ", the source's ", d.device_id(), ": not the same device"));
      }
      attached.push_back(absl::StrCat("iscsi:", mine->target, ":", mine->lun));
    } else if (d.kind() == v1::DISK_KIND_DRBD) {
      const VolumeSpec* mine = Configured(d);
      if (mine == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(options_.hostname, " may not promote DRBD resource '", d.drbd_resource(),
                         "': its volumes file does not list it"));
      }
      if (std::string m = PathMismatch(d, *mine); !m.empty()) {
        return absl::FailedPreconditionError(absl::StrCat("disk ", DiskName(d), ": ", m));
      }
      const std::string& res = mine->resource;
      const std::string line = absl::StrCat("drbd ", res);
      auto st = Drbd(res);
      if (!st.ok()) {
        return absl::UnavailableError(
            absl::StrCat("cannot read DRBD resource ", res, " on ", options_.hostname,
                         " before promoting it: ", st.status().message()));
      }
      if (st->role == "Primary") {
        // By this migration (a repeated call), or primary before it: left as it is.
        if (std::find(done.begin(), done.end(), line) != done.end()) {
          attached.push_back(absl::StrCat("drbd:", res));
        }
        continue;
      }
      // Checked again now, not only at the check step: promoted while disconnected, this side
      // would miss the source's last writes and the guest would resume on stale data.
      if (std::vector<std::string> missing = DrbdProblems(*st); !missing.empty()) {
        return absl::FailedPreconditionError(absl::StrCat("not promoting DRBD resource ", res,
                                                          " on ", options_.hostname, ": it ",
                                                          absl::StrJoin(missing, "; ")));
      }
      RETURN_IF_ERROR(remember(line));
      RETURN_IF_ERROR(DrbdRole(res, true));
      attached.push_back(absl::StrCat("drbd:", res));
    }
  }
  return attached;
}

absl::Status Volumes::Detach(const std::string& line) {
  std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
  uint32_t lun = 0;
  if (w.size() == 4 && w[0] == "iscsi" && absl::SimpleAtoi(w[3], &lun)) {
    return IscsiLogout(w[1], w[2], lun);
  }
  if (w.size() == 2 && w[0] == "drbd") return DrbdRole(w[1], false);
  return absl::InternalError(absl::StrCat("unreadable volume record '", line, "'"));
}

absl::Status Volumes::Undo(const std::string& migration_id) {
  const std::string record = RecordPath(migration_id);
  std::vector<std::string> lines = ReadLines(record);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) RETURN_IF_ERROR(Detach(*it));
  unlink(record.c_str());
  return absl::OkStatus();
}

void Volumes::Forget(const std::string& migration_id) { unlink(RecordPath(migration_id).c_str()); }

std::vector<std::string> Volumes::HeldLines(const v1::DomainInfo& instance) const {
  std::vector<std::string> out;
  for (const v1::DomainDisk& d : instance.disks()) {
    const VolumeSpec* v = Configured(d);
    if (v == nullptr) continue;
    const std::string line = v->kind == v1::DISK_KIND_ISCSI
                                 ? absl::StrCat("iscsi ", v->portal, " ", v->target, " ", v->lun)
                                 : absl::StrCat("drbd ", v->resource);
    if (std::find(out.begin(), out.end(), line) == out.end()) out.push_back(line);
  }
  return out;
}

std::string Volumes::HeldPath(const std::string& migration_id) const {
  return absl::StrCat(options_.state_dir, "/volumes/", migration_id, ".held");
}

absl::Status Volumes::NoteHeld(const std::string& migration_id, const v1::DomainInfo& instance) {
  std::vector<std::string> lines = ReadLines(HeldPath(migration_id));
  for (const std::string& l : HeldLines(instance)) {
    if (std::find(lines.begin(), lines.end(), l) == lines.end()) lines.push_back(l);
  }
  if (lines.empty()) return absl::OkStatus();
  mkdir(absl::StrCat(options_.state_dir, "/volumes").c_str(), 0700);
  return WriteLines(HeldPath(migration_id), lines);
}

void Volumes::ForgetHeld(const std::string& migration_id) {
  unlink(HeldPath(migration_id).c_str());
}

absl::Status Volumes::Release(const std::string& migration_id, const v1::DomainInfo& instance) {
  std::vector<std::string> lines = ReadLines(HeldPath(migration_id));
  for (const std::string& l : HeldLines(instance)) {
    if (std::find(lines.begin(), lines.end(), l) == lines.end()) lines.push_back(l);
  }
  for (const std::string& l : lines) RETURN_IF_ERROR(Detach(l));
  ForgetHeld(migration_id);
  return absl::OkStatus();
}

}  // namespace livemig::driver
