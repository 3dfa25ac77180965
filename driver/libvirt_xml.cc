#include "driver/libvirt_xml.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "driver/xml.h"

namespace livemig::driver {
namespace {

// The root element of `text` when it parses and is named `root`; a null node otherwise.
xml::Node Root(const std::string& text, const char* root, const char* what) {
  auto doc = xml::Document::Parse(text, what);
  if (!doc.ok() || doc->Root().Name() != root || !doc->Root().NamespaceUri().empty()) {
    return xml::Node();
  }
  return doc->Root();  // the node keeps its document alive
}

// The <devices> children named `name` of a domain definition.
std::vector<xml::Node> Devices(const std::string& domain_xml, const char* name) {
  return Root(domain_xml, "domain", "domain XML").Child("devices").Children(name);
}

}  // namespace

std::vector<std::string> PciHostDevices(const std::string& domain_xml) {
  std::vector<std::string> out;
  for (const xml::Node& hostdev : Devices(domain_xml, "hostdev")) {
    if (hostdev.Attribute("type") != "pci") continue;
    // The host's address is <source><address>; the <address> beside <source> is the guest's.
    const xml::Node address = hostdev.Child("source").Child("address");
    if (address.null()) {
      out.push_back("pci (address unknown)");
      continue;
    }
    auto num = [&](const char* name) {
      return std::strtoul(address.Attribute(name).c_str(), nullptr, 0);
    };
    out.push_back(absl::StrFormat("%04x:%02x:%02x.%x", num("domain"), num("bus"), num("slot"),
                                  num("function")));
  }
  return out;
}

std::vector<cv1::LocalDisk> LocalFileDisks(const std::string& domain_xml) {
  std::vector<cv1::LocalDisk> out;
  for (const xml::Node& disk : Devices(domain_xml, "disk")) {
    if (disk.Attribute("type") != "file" || disk.Attribute("device") != "disk") continue;
    if (disk.HasChild("readonly") || disk.HasChild("shareable")) continue;
    const std::string path = disk.Child("source").Attribute("file");
    if (path.empty()) continue;
    cv1::LocalDisk d;
    d.set_path(path);
    const std::string format = disk.Child("driver").Attribute("type");
    d.set_format(format.empty() ? "raw" : format);
    d.set_target(disk.Child("target").Attribute("dev"));
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<v1::DomainDisk> DomainDisks(const std::string& domain_xml) {
  std::vector<v1::DomainDisk> out;
  for (const xml::Node& disk : Devices(domain_xml, "disk")) {
    const std::string device = disk.Attribute("device");
    if (!device.empty() && device != "disk" && device != "cdrom" && device != "lun") continue;
    v1::DomainDisk d;
    d.set_type(disk.Attribute("type"));
    const xml::Node source = disk.Child("source");
    for (const char* key : {"file", "dev", "name", "volume"}) {
      const std::string value = source.Attribute(key);
      if (!value.empty()) {
        d.set_source(value);
        break;
      }
    }
    d.set_target_dev(disk.Child("target").Attribute("dev"));
    d.set_read_only(device == "cdrom" || disk.HasChild("readonly"));
    if (d.type() == "file") d.set_kind(v1::DISK_KIND_FILE);
    if (d.type() == "block") d.set_kind(v1::DISK_KIND_BLOCK);
    if (d.type() == "network" || d.type() == "volume") d.set_kind(v1::DISK_KIND_OTHER);
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<v1::DomainInterface> BridgeInterfaces(const std::string& domain_xml) {
  std::vector<v1::DomainInterface> out;
  for (const xml::Node& iface : Devices(domain_xml, "interface")) {
    if (iface.Attribute("type") != "bridge") continue;
    v1::DomainInterface nic;
    nic.set_bridge(iface.Child("source").Attribute("bridge"));
    nic.set_mac(iface.Child("mac").Attribute("address"));
    nic.set_model(iface.Child("model").Attribute("type"));
    out.push_back(std::move(nic));
  }
  return out;
}

std::string XenGuestKind(const std::string& domain_xml) {
  const xml::Node domain = Root(domain_xml, "domain", "domain XML");
  if (domain.Attribute("type") != "xen") return "";
  const xml::Node type = domain.Child("os").Child("type");
  if (type.null()) return "";
  const std::string text(absl::StripAsciiWhitespace(type.Text()));
  const std::string machine = type.Attribute("machine");
  if (text == "xenpvh" || machine == "xenpvh") return "pvh";
  if (text == "hvm" || machine == "xenfv") return "hvm";
  if (text == "xen" || text == "linux" || machine == "xenpv") return "pv";
  return "";
}

HostCapabilities ReadHostCapabilities(const std::string& capabilities_xml) {
  HostCapabilities out;
  const xml::Node host = Root(capabilities_xml, "capabilities", "capabilities XML").Child("host");
  out.uuid = host.Child("uuid").Text();
  const xml::Node cpu = host.Child("cpu");
  if (cpu.null()) return out;
  out.cpu.set_arch(cpu.Child("arch").Text());
  out.cpu.set_model(cpu.Child("model").Text());
  out.cpu.set_vendor(cpu.Child("vendor").Text());
  for (const xml::Node& feature : cpu.Children("feature")) {
    const std::string name = feature.Attribute("name");
    if (!name.empty()) out.cpu.add_features(name);
  }
  out.cpu.set_xml(cpu.Serialize());
  return out;
}

}  // namespace livemig::driver
