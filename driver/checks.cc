#include "driver/checks.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace livemig::driver {
namespace {

v1::CheckResult Check(const std::string& host, const std::string& name, bool passed,
                      const std::string& reason) {
  v1::CheckResult c;
  c.set_host(host);
  c.set_name(name);
  c.set_passed(passed);
  c.set_reason(reason);
  return c;
}

}  // namespace

absl::Status ValidateMigrationId(const std::string& id) {
  static const std::regex kRe("^[A-Za-z0-9._-]{1,128}$");
  if (!std::regex_match(id, kRe) || id == "." || id == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        "migration id '", id, "' is malformed: 1 to 128 characters of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateUuid(const std::string& uuid) {
  static const std::regex kRe(
      "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$");
  if (!std::regex_match(uuid, kRe)) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance uuid '", uuid, "' is not a UUID (8-4-4-4-12 hexadecimal digits)"));
  }
  return absl::OkStatus();
}

std::string ProbePath(const std::string& instance_path, const std::string& migration_id) {
  return absl::StrCat(instance_path, "/.livemig-probe-", migration_id);
}

DestFacts DestFactsFrom(const v1::HostInventory& inv, const std::string& hostname,
                        const std::vector<std::string>& bridges, const std::string& instance_path,
                        const v1::BackendCapabilities& caps, const std::string& migration_id) {
  DestFacts f;
  f.hostname = hostname;
  f.hypervisor_type = inv.hypervisor_type();
  f.hypervisor_version = inv.hypervisor_version();
  f.cpu = inv.cpu();
  f.memory_free_mib = inv.memory_free_mib();
  f.memory_reserved_mib = inv.memory_reserved_mib();
  f.bridges = bridges;
  f.instance_path = instance_path;
  f.capabilities = caps;
  std::ofstream out(ProbePath(instance_path, migration_id));
  out << migration_id << "\n";
  f.probe_written = static_cast<bool>(out);
  if (!f.probe_written) f.probe_error = std::strerror(errno);
  return f;
}

bool ProbeVisible(const std::string& instance_path, const std::string& migration_id) {
  return access(ProbePath(instance_path, migration_id).c_str(), F_OK) == 0;
}

void RemoveProbe(const std::string& instance_path, const std::string& migration_id) {
  unlink(ProbePath(instance_path, migration_id).c_str());
}

std::string FormatVersion(uint64_t v) {
  return absl::StrCat(v / 1000000, ".", (v / 1000) % 1000, ".", v % 1000);
}

std::string MemoryReason(const std::string& host, int64_t free_mib, int64_t reserved_mib,
                         int64_t claimed_mib, const std::string& instance, int64_t need_mib) {
  const bool claims = claimed_mib >= 0;
  const std::string held = claims ? absl::StrCat(reserved_mib, " MiB dom0 reserve and ",
                                                 claimed_mib, " MiB claimed by inbound migrations")
                                  : absl::StrCat(reserved_mib, " MiB dom0 reserve");
  const int64_t avail = free_mib - reserved_mib - std::max<int64_t>(claimed_mib, 0);
  return absl::StrCat(
      "destination ", host, " has ", free_mib, " MiB free; ",
      avail >= 0 ? absl::StrCat("the ", held, claims ? " leave " : " leaves ", avail, " MiB")
                 : absl::StrCat("that is within its ", held, ", so none is available"),
      "; instance ", instance, " needs ", need_mib, " MiB");
}

v1::BackendCapabilities BackendCapabilitiesFor(const std::string& profile, bool qemu_features) {
  v1::BackendCapabilities c;
  c.set_profile(profile);
  c.set_supports_live(true);
  c.set_supports_offline(true);
  c.set_supports_peer_to_peer(true);
  c.set_supports_tunnelled(true);
  c.set_supports_compare_cpu(true);
  if (qemu_features) {
    c.set_supports_abort(true);
    c.set_supports_force_complete(true);
    c.set_supports_post_copy(true);
    c.set_supports_bandwidth(true);
    c.set_supports_max_downtime(true);
    c.set_supports_job_stats_bytes(true);
    c.set_supports_block_migration(true);
    c.set_supports_auto_converge(true);
    c.set_supports_completion_timeout(true);
  }
  return c;
}

absl::Status CheckOptionsSupported(const v1::MigrationOptions& o,
                                   const v1::BackendCapabilities& caps,
                                   const std::string& hypervisor) {
  std::vector<std::string> missing;
  if (o.mode() == v1::MIGRATION_MODE_OFFLINE && !caps.supports_offline()) {
    missing.push_back("offline migration (--offline)");
  }
  if (o.mode() != v1::MIGRATION_MODE_OFFLINE && !caps.supports_live()) {
    missing.push_back("live migration");
  }
  if (o.has_bandwidth_mib_s() && o.bandwidth_mib_s() > 0 && !caps.supports_bandwidth()) {
    missing.push_back("a bandwidth limit (--bandwidth)");
  }
  if ((o.has_max_downtime_ms() || o.has_downtime_steps() || o.has_downtime_step_delay_s()) &&
      !caps.supports_max_downtime()) {
    missing.push_back("a maximum downtime (--max-downtime)");
  }
  if (o.allow_post_copy() && !caps.supports_post_copy()) {
    missing.push_back("post-copy (--allow-post-copy)");
  }
  if (o.has_completion_timeout_s() && o.completion_timeout_s() > 0) {
    if (!caps.supports_completion_timeout()) {
      missing.push_back("a completion timeout (--completion-timeout)");
    } else if (o.completion_action() == v1::COMPLETION_ACTION_FORCE_COMPLETE &&
               !caps.supports_force_complete()) {
      missing.push_back("force-complete as the completion action");
    } else if (o.completion_action() != v1::COMPLETION_ACTION_FORCE_COMPLETE &&
               !caps.supports_abort()) {
      missing.push_back("abort as the completion action");
    }
  }
  if (o.block_migration() == v1::BLOCK_MIGRATION_YES && !caps.supports_block_migration()) {
    missing.push_back("block migration (--block-migrate yes)");
  }
  if (missing.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      hypervisor, " does not support ", absl::StrJoin(missing, ", "),
      ": leave these options out for this host (it reports progress as elapsed time only)"));
}

cv1::CheckCanLiveMigrateOnDestResponse EvaluateDestChecks(
    const cv1::CheckCanLiveMigrateOnDestRequest& req, const DestFacts& f) {
  cv1::CheckCanLiveMigrateOnDestResponse resp;
  const std::string& h = f.hostname;
  auto add = [&](const std::string& name, bool ok, const std::string& reason) {
    *resp.add_checks() = Check(h, name, ok, reason);
  };

  // Hypervisor type and version.
  if (!req.source_hypervisor_type().empty()) {
    bool same = req.source_hypervisor_type() == f.hypervisor_type;
    add("hypervisor_type", same,
        same ? absl::StrCat("both hosts run ", f.hypervisor_type)
             : absl::StrCat("source runs ", req.source_hypervisor_type(), ", destination ", h,
                            " runs ", f.hypervisor_type));
  }
  if (req.source_hypervisor_version() > 0) {
    bool ok = f.hypervisor_version >= req.source_hypervisor_version();
    add("hypervisor_version", ok,
        absl::StrCat("destination ", h, " has ", f.hypervisor_type, " ",
                     FormatVersion(f.hypervisor_version), ok ? " >= " : " < ", "source's ",
                     FormatVersion(req.source_hypervisor_version())));
  }

  // CPU.
  const v1::CpuInfo& src = req.source_cpu();
  if (!src.arch().empty() && !f.cpu.arch().empty() && src.arch() != f.cpu.arch()) {
    add("cpu", false,
        absl::StrCat("CPU architecture differs: source ", src.arch(), ", destination ", h, " ",
                     f.cpu.arch()));
  } else if (f.cpu_compatible.has_value()) {
    add("cpu", *f.cpu_compatible,
        *f.cpu_compatible
            ? absl::StrCat("the hypervisor on ", h, " accepts the source CPU (CompareCPU)")
            : absl::StrCat("destination ", h,
                           " CPU is incompatible with the source CPU: ", f.cpu_reason));
  } else {
    std::set<std::string> have(f.cpu.features().begin(), f.cpu.features().end());
    std::vector<std::string> lacking;
    for (const auto& feat : src.features()) {
      if (!have.count(feat)) lacking.push_back(feat);
    }
    add("cpu", lacking.empty(),
        lacking.empty()
            ? absl::StrCat("destination ", h, " has every source CPU feature")
            : absl::StrCat("destination ", h,
                           " CPU lacks source features: ", absl::StrJoin(lacking, ", ")));
  }

  // Memory after the dom0 reserve.
  const uint64_t need = req.instance().memory_mib();
  const uint64_t avail =
      f.memory_free_mib > f.memory_reserved_mib ? f.memory_free_mib - f.memory_reserved_mib : 0;
  add("memory", avail >= need,
      MemoryReason(h, static_cast<int64_t>(f.memory_free_mib),
                   static_cast<int64_t>(f.memory_reserved_mib), -1,
                   req.instance().name().empty() ? req.instance_uuid() : req.instance().name(),
                   static_cast<int64_t>(need)));

  // Networks: every bridge the instance's NICs use must exist here.
  std::set<std::string> bridges(f.bridges.begin(), f.bridges.end());
  std::vector<std::string> absent;
  for (const auto& nic : req.instance().interfaces()) {
    if (!nic.bridge().empty() && !bridges.count(nic.bridge())) absent.push_back(nic.bridge());
  }
  add("network", absent.empty(),
      absent.empty()
          ? absl::StrCat("destination ", h, " has the instance's bridges (",
                         absl::StrJoin(f.bridges, ", "), ")")
          : absl::StrCat("destination ", h, " lacks the bridge(s) ", absl::StrJoin(absent, ", "),
                         " that the instance's NICs use (not on the same L2 segment)"));

  // Xen: a PV guest needs shadow paging on this host.
  if (auto c = XenPvShadowPagingCheck(req.instance(), "destination", h, f.capabilities)) {
    *resp.add_checks() = *c;
  }

  // Storage probe.
  add("storage_probe", f.probe_written,
      f.probe_written ? absl::StrCat("probe file written on ", h, ":", f.instance_path)
                      : absl::StrCat("cannot write the probe file on ", h, ":", f.instance_path,
                                     ": ", f.probe_error));

  bool passed = true;
  for (const auto& c : resp.checks()) passed = passed && c.passed();
  resp.set_passed(passed);
  cv1::DestCheckData* d = resp.mutable_dest_check_data();
  d->set_dest_host(h);
  d->set_probe_file_name(f.probe_written ? ProbePath(f.instance_path, req.migration_id()) : "");
  d->set_instance_path(f.instance_path);
  *d->mutable_dest_cpu() = f.cpu;
  d->set_memory_available_mib(avail);
  d->set_memory_reserved_mib(f.memory_reserved_mib);
  *d->mutable_capabilities() = f.capabilities;
  d->set_hypervisor_type(f.hypervisor_type);
  d->set_hypervisor_version(f.hypervisor_version);
  for (const auto& b : f.bridges) d->add_networks()->set_name(b);
  return resp;
}

cv1::CheckCanLiveMigrateOnSrcResponse EvaluateSrcChecks(
    const cv1::CheckCanLiveMigrateOnSrcRequest& req, bool probe_visible,
    const v1::BackendCapabilities& caps, const std::string& hypervisor,
    const v1::DomainInfo& domain, const std::string& domain_xml) {
  cv1::CheckCanLiveMigrateOnSrcResponse resp;
  const std::string& h = req.source_host();
  auto add = [&](const std::string& name, bool ok, const std::string& reason) {
    *resp.add_checks() = Check(h, name, ok, reason);
  };
  const v1::BlockMigration bm = req.options().block_migration();
  bool block = false;
  if (probe_visible) {
    if (bm == v1::BLOCK_MIGRATION_YES) {
      block = true;
      add("shared_storage", caps.supports_block_migration(),
          caps.supports_block_migration()
              ? "instance storage is shared, but block migration was requested explicitly"
              : absl::StrCat(hypervisor, " does not support block migration"));
    } else {
      add("shared_storage", true,
          absl::StrCat("source ", h,
                       " sees the destination's probe file: the instance path "
                       "is shared storage"));
    }
  } else if (bm == v1::BLOCK_MIGRATION_NO) {
    add("shared_storage", false,
        absl::StrCat("source ", h, " cannot see the probe file ",
                     req.dest_check_data().probe_file_name(), " written by ",
                     req.dest_check_data().dest_host(),
                     ": the instance path is not shared, and block migration is off"));
  } else if (!caps.supports_block_migration()) {
    add("shared_storage", false,
        absl::StrCat("source ", h, " cannot see the probe file ",
                     req.dest_check_data().probe_file_name(), " written by ",
                     req.dest_check_data().dest_host(),
                     ": the instance path is not shared storage, and ", hypervisor,
                     " does not support block migration"));
  } else {
    block = true;
    add("shared_storage", true,
        "the instance path is not shared: the local disks will be copied (block migration)");
  }
  absl::Status opts = CheckOptionsSupported(req.options(), caps, hypervisor);
  add("options", opts.ok(),
      opts.ok() ? "every requested option is supported" : std::string(opts.message()));
  const std::string name = domain.name().empty() ? domain.uuid() : domain.name();
  add("pci_passthrough", domain.host_devices().empty(),
      domain.host_devices().empty()
          ? absl::StrCat("instance ", name, " has no PCI device passed through from ", h)
          : absl::StrCat("instance ", name, " has PCI devices passed through from ", h, " (",
                         absl::StrJoin(domain.host_devices(), ", "),
                         "): their state stays with this host's hardware, so it cannot "
                         "live-migrate. Detach them first (virsh detach-device), or move it "
                         "offline"));
  // Xen: a PV guest needs shadow paging on this host, and on the destination. The destination's
  // own check refuses first; its capabilities in the check data are looked at again here so that
  // the source refuses even where the destination could not tell the guest's kind.
  if (auto c = XenPvShadowPagingCheck(domain, "source", h, caps)) *resp.add_checks() = *c;
  if (auto c = XenPvShadowPagingCheck(domain, "destination", req.dest_check_data().dest_host(),
                                      req.dest_check_data().capabilities());
      c && !c->passed()) {
    *resp.add_checks() = *c;
  }
  bool passed = true;
  for (const auto& c : resp.checks()) passed = passed && c.passed();
  resp.set_passed(passed);
  cv1::SrcCheckData* s = resp.mutable_src_check_data();
  s->set_shared_instance_path(probe_visible);
  s->set_block_migration(block);
  *s->mutable_domain() = domain;
  s->set_domain_xml(domain_xml);
  return resp;
}

absl::StatusOr<std::vector<std::string>> ParseXenVirtCaps(const std::string& out) {
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    if (absl::StripAsciiWhitespace(line.substr(0, colon)) != "virt_caps") continue;
    std::vector<std::string> words =
        absl::StrSplit(line.substr(colon + 1), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.empty()) return absl::NotFoundError("xl info printed an empty virt_caps line");
    return words;
  }
  return absl::NotFoundError("xl info printed no virt_caps line");
}

void SetXenPagingCaps(const absl::StatusOr<std::string>& xl_info, v1::BackendCapabilities* caps) {
  caps->clear_xen_virt_caps();
  caps->clear_pv_live_migration();
  caps->clear_xen_info_error();
  if (!xl_info.ok()) {
    caps->set_xen_info_error(std::string(xl_info.status().message()));
    return;
  }
  absl::StatusOr<std::vector<std::string>> words = ParseXenVirtCaps(*xl_info);
  if (!words.ok()) {
    caps->set_xen_info_error(std::string(words.status().message()));
    return;
  }
  bool shadow = false;
  for (const auto& w : *words) {
    caps->add_xen_virt_caps(w);
    shadow = shadow || w == "shadow";
  }
  caps->set_pv_live_migration(shadow);
}

std::optional<v1::CheckResult> XenPvShadowPagingCheck(const v1::DomainInfo& instance,
                                                      const std::string& role,
                                                      const std::string& host,
                                                      const v1::BackendCapabilities& caps) {
  const std::string& kind = instance.guest_kind();
  if (kind.empty()) return std::nullopt;
  const std::string name = instance.name().empty() ? instance.uuid() : instance.name();
  const std::string virt_caps = absl::StrJoin(caps.xen_virt_caps(), " ");
  constexpr char kName[] = "xen_pv_shadow_paging";
  if (kind != "pv") {
    return Check(host, kName, true,
                 absl::StrCat("instance ", name, " is a ", absl::AsciiStrToUpper(kind),
                              " guest: it migrates on HAP and needs no shadow paging on the ", role,
                              " host ", host));
  }
  if (!caps.has_pv_live_migration()) {
    return Check(
        host, kName, true,
        absl::StrCat("instance ", name, " is a PV guest; whether the ", role, " host ", host,
                     " runs Xen with shadow paging is unknown (",
                     caps.xen_info_error().empty() ? "the host reports no xl info virt_caps"
                                                   : caps.xen_info_error(),
                     "): not refused on a guess (without shadow paging the transfer would fail "
                     "after about 2 s: Failed to enable logdirty)"));
  }
  if (caps.pv_live_migration()) {
    return Check(host, kName, true,
                 absl::StrCat("instance ", name, " is a PV guest and the ", role, " host ", host,
                              " runs Xen with shadow paging (xl info virt_caps: ", virt_caps, ")"));
  }
  return Check(
      host, kName, false,
      absl::StrCat("instance ", name, " is a PV guest and host ", host,
                   " runs Xen without shadow paging (xl info virt_caps: ", virt_caps,
                   "): PV live migration needs log-dirty on shadow paging. Ways out: boot ", host,
                   " with a Xen built with shadow paging (CONFIG_SHADOW_PAGING=y, e.g. Debian's "
                   "4.17.5 from bookworm), or run the guest as PVH or HVM, which migrate on HAP."));
}

}  // namespace livemig::driver
