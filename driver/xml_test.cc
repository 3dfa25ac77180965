// The XML layer (driver/xml.h) and the readers of libvirt's documents (driver/libvirt_xml.h) on
// libvirt's own output: a domain defined on libvirt 9.0's test driver (test:///default) and read
// back with `virsh dumpxml`, libvirt's capabilities of a KVM host, and the cases where a regular
// expression over the text would read the wrong thing (comments, metadata, escaped attributes).
#include "driver/xml.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "driver/libvirt_xml.h"

namespace livemig::driver {
namespace {

// `virsh -c test:///default "define d.xml; dumpxml web-1"` (libvirt 9.0.0, Debian 12): libvirt's
// formatting, with the entities it writes in attributes and text and two metadata namespaces.
constexpr char kWeb1[] = R"XML(<domain type='test'>
  <name>web-1</name>
  <uuid>3f2504e0-4f89-41d3-9a0c-0305e82c3301</uuid>
  <title>web &amp; &quot;api&quot; tier</title>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>web-1</nova:name>
      <nova:flavor name="m1.small">
        <nova:memory>512</nova:memory>
      </nova:flavor>
    </nova:instance>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/livemig/local/web-1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/drbd/by-res/data/0'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/web-1'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/it&apos;s &quot;debian&quot;.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <address type='drive' controller='0' bus='1' target='0' unit='0'/>
    </disk>
    <controller type='ide' index='0'/>
    <interface type='bridge'>
      <mac address='52:54:00:0a:0b:0c'/>
      <source bridge='br-guest'/>
      <target dev='testnet0'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:0a:0b:0d'/>
      <source network='default'/>
      <target dev='testnet1'/>
    </interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x0a' slot='0x1f' function='0x7'/>
      </source>
    </hostdev>
  </devices>
</domain>)XML";

// The <host> of `virsh capabilities` on a KVM host (libvirt 9.0.0), cut to the parts read here.
constexpr char kKvmCaps[] = R"XML(<capabilities>

  <host>
    <uuid>4c4c4544-0034-5a10-8052-b4c04f4e3432</uuid>
    <cpu>
      <arch>x86_64</arch>
      <model>Skylake-Client-IBRS</model>
      <vendor>Intel</vendor>
      <microcode version='240'/>
      <counter name='tsc' frequency='2112000000' scaling='no'/>
      <topology sockets='1' dies='1' cores='4' threads='2'/>
      <maxphysaddr mode='emulate' bits='39'/>
      <feature name='ds'/>
      <feature name='vmx'/>
      <feature name='pdcm'/>
      <pages unit='KiB' size='4'/>
      <pages unit='KiB' size='2048'/>
    </cpu>
    <power_management>
      <suspend_mem/>
    </power_management>
    <topology>
      <cells num='1'>
        <cell id='0'>
          <cpus num='2'>
            <cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0,4'/>
            <cpu id='1' socket_id='0' die_id='0' core_id='1' siblings='1,5'/>
          </cpus>
        </cell>
      </cells>
    </topology>
  </host>

  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <domain type='kvm'/>
    </arch>
    <features>
      <acpi default='on' toggle='yes'/>
    </features>
  </guest>

</capabilities>
)XML";

const xml::Namespaces kMetadataNs = {{"nova", "http://openstack.org/xmlns/libvirt/nova/1.1"},
                                     {"osinfo", "http://libosinfo.org/xmlns/libvirt/domain/1.0"}};

TEST_CASE("xml: a malformed document is an error naming the document, line and column") {
  SECTION("a tag closed by the wrong end tag") {
    auto doc = xml::Document::Parse("<domain>\n  <devices>\n</domain>", "domain XML of vm-1");
    REQUIRE_FALSE(doc.ok());
    INFO(doc.status().ToString());
    CHECK(doc.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StartsWith(doc.status().message(), "cannot parse domain XML of vm-1: line 3,"));
    CHECK(absl::StrContains(doc.status().message(), "mismatch"));
  }
  SECTION("not XML at all, empty, truncated, an unquoted attribute, two roots") {
    for (const char* text : {"error: failed to get domain 'vm-1'", "", "<domain type='xen'>",
                             "<domain type=xen/>", "<a/><b/>", "<a>&nosuch;</a>"}) {
      INFO(text);
      auto doc = xml::Document::Parse(text, "capabilities XML");
      REQUIRE_FALSE(doc.ok());
      CHECK(doc.status().code() == absl::StatusCode::kInvalidArgument);
      CHECK(absl::StartsWith(doc.status().message(), "cannot parse capabilities XML: "));
    }
  }
  SECTION("the readers read nothing from it, as from a document without the element") {
    const std::string broken = "<domain type='xen'><devices><disk type='file'></devices></domain>";
    CHECK(DomainDisks(broken).empty());
    CHECK(LocalFileDisks(broken).empty());
    CHECK(XenGuestKind(broken).empty());
    CHECK(ReadHostCapabilities("<capabilities><host>").cpu.arch().empty());
  }
}

TEST_CASE("xml: attributes and text come back decoded, whatever the quotes") {
  auto doc = xml::Document::Parse(
      "<d a=\"it's\" b='say \"hi\"' c='&lt;&amp;&gt;&apos;&quot;' e='&#x41;&#66;' f=''>"
      "t&amp;<!-- not text -->u<![CDATA[<v>]]></d>",
      "test XML");
  REQUIRE(doc.ok());
  const xml::Node d = doc->Root();
  CHECK(d.Attribute("a") == "it's");
  CHECK(d.Attribute("b") == "say \"hi\"");
  CHECK(d.Attribute("c") == "<&>'\"");
  CHECK(d.Attribute("e") == "AB");
  CHECK(d.HasAttribute("f"));
  CHECK(d.Attribute("f").empty());
  CHECK_FALSE(d.HasAttribute("g"));
  CHECK(d.Attribute("g").empty());
  CHECK(d.Text() == "t&u<v>");  // the comment is not text

  // libvirt writes ' and " in attribute values as &apos; and &quot;.
  const auto disks = DomainDisks(kWeb1);
  REQUIRE(disks.size() == 4);
  CHECK(disks[3].source() == "/iso/it's \"debian\".iso");
  auto web1 = xml::Document::Parse(kWeb1, "domain XML");
  REQUIRE(web1.ok());
  CHECK(web1->Root().Child("title").Text() == "web & \"api\" tier");
}

TEST_CASE("xml: the DOM walk and XPath on libvirt's domain XML") {
  auto doc = xml::Document::Parse(kWeb1, "domain XML");
  REQUIRE(doc.ok());
  const xml::Node domain = doc->Root();
  CHECK(domain.Name() == "domain");
  CHECK(domain.Attribute("type") == "test");
  CHECK(domain.Child("memory").Attribute("unit") == "KiB");
  CHECK(domain.Child("memory").Text() == "524288");
  CHECK(domain.Child("vcpu").Text() == "1");
  CHECK(domain.Child("os").Child("type").Text() == "hvm");
  // A null node answers empty all the way down.
  CHECK(domain.Child("nosuch").null());
  CHECK(domain.Child("nosuch").Child("x").Attribute("y").empty());
  CHECK(domain.Child("nosuch").Children("x").empty());

  const auto disks = domain.Child("devices").Children("disk");
  REQUIRE(disks.size() == 4);
  CHECK(disks[0].Child("source").Attribute("file") == "/var/lib/livemig/local/web-1.qcow2");
  CHECK(disks[2].Child("source").Attribute("protocol") == "rbd");

  auto by_xpath = doc->Select("/domain/devices/disk[@device='disk']/target");
  REQUIRE(by_xpath.ok());
  REQUIRE(by_xpath->size() == 3);
  CHECK((*by_xpath)[1].Attribute("dev") == "vdb");
  CHECK(*doc->SelectString("count(/domain/devices/interface)") == "2");
  CHECK(*domain.SelectString("devices/interface[source/@bridge='br-guest']/mac/@address") ==
        "52:54:00:0a:0b:0c");
  CHECK(domain.SelectString("devices/nosuch/@x")->empty());

  auto bad = doc->Select("/domain/devices/disk[");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(bad.status().message() ==
        "invalid XPath expression '/domain/devices/disk[': Invalid expression");
  auto value = doc->Select("count(//disk)");
  REQUIRE_FALSE(value.ok());
  CHECK(absl::StrContains(value.status().message(), "not nodes"));
}

TEST_CASE("xml: namespaced elements in <metadata> are not libvirt's, and XPath reaches them") {
  auto doc = xml::Document::Parse(kWeb1, "domain XML");
  REQUIRE(doc.ok());
  const xml::Node metadata = doc->Root().Child("metadata");
  // <libosinfo:os> is not the domain's <os>, and no <name> of nova's is the domain's name.
  CHECK(metadata.Children("os").empty());
  CHECK(metadata.Child("instance").null());
  const auto elements = metadata.Elements();
  REQUIRE(elements.size() == 2);
  CHECK(elements[0].Name() == "instance");
  CHECK(elements[0].NamespaceUri() == "http://openstack.org/xmlns/libvirt/nova/1.1");
  CHECK(elements[1].NamespaceUri() == "http://libosinfo.org/xmlns/libvirt/domain/1.0");

  // The prefixes bound here need not be the document's (libosinfo: there, osinfo: here).
  CHECK(*doc->SelectString("/domain/metadata/nova:instance/nova:name", kMetadataNs) == "web-1");
  CHECK(*doc->SelectString("string(//nova:flavor/@name)", kMetadataNs) == "m1.small");
  auto os = doc->Select("//osinfo:os", kMetadataNs);
  REQUIRE(os.ok());
  REQUIRE(os->size() == 1);
  CHECK((*os)[0].Attribute("id") == "http://debian.org/debian/12");
  // In no namespace, //name is the domain's <name> only.
  auto names = doc->Select("//name");
  REQUIRE(names.ok());
  REQUIRE(names->size() == 1);
  CHECK((*names)[0].Text() == "web-1");
  // A prefix that is not bound is an error, not an empty answer.
  auto unbound = doc->Select("//nova:name");
  REQUIRE_FALSE(unbound.ok());
  CHECK(unbound.status().message() ==
        "invalid XPath expression '//nova:name': Undefined namespace prefix");
}

TEST_CASE("libvirt_xml: disks, interfaces and PCI devices of libvirt's domain XML") {
  const auto disks = DomainDisks(kWeb1);
  REQUIRE(disks.size() == 4);
  CHECK(disks[0].type() == "file");
  CHECK(disks[0].source() == "/var/lib/livemig/local/web-1.qcow2");
  CHECK(disks[0].target_dev() == "vda");
  CHECK(disks[0].kind() == v1::DISK_KIND_FILE);
  CHECK_FALSE(disks[0].read_only());
  CHECK(disks[1].source() == "/dev/drbd/by-res/data/0");
  CHECK(disks[1].kind() == v1::DISK_KIND_BLOCK);
  CHECK(disks[2].source() == "pool/web-1");  // a network disk: its name
  CHECK(disks[2].kind() == v1::DISK_KIND_OTHER);
  CHECK(disks[3].target_dev() == "hdc");
  CHECK(disks[3].read_only());

  const auto local = LocalFileDisks(kWeb1);  // not the block, network or read-only ones
  REQUIRE(local.size() == 1);
  CHECK(local[0].path() == "/var/lib/livemig/local/web-1.qcow2");
  CHECK(local[0].format() == "qcow2");
  CHECK(local[0].target() == "vda");

  const auto nics = BridgeInterfaces(kWeb1);  // not the one on libvirt's network
  REQUIRE(nics.size() == 1);
  CHECK(nics[0].bridge() == "br-guest");
  CHECK(nics[0].mac() == "52:54:00:0a:0b:0c");
  CHECK(nics[0].model() == "virtio");

  CHECK(PciHostDevices(kWeb1) == std::vector<std::string>{"0000:0a:1f.7"});
  CHECK(XenGuestKind(kWeb1).empty());  // a test-driver domain, not Xen's
}

TEST_CASE("libvirt_xml: what a regular expression over the text read wrongly") {
  const std::string xml =
      "<domain type=\"xen\">\n"
      "  <description>copied from &lt;disk type='file'&gt;</description>\n"
      "  <metadata><app:cfg xmlns:app='urn:app'><disk type='file' device='disk'>"
      "<source file='/meta.img'/></disk><interface type='bridge'><source bridge='meta'/>"
      "</interface><app:os><type>hvm</type></app:os></app:cfg></metadata>\n"
      "  <os><type machine=\"xenpvh\">xenpvh</type></os>\n"
      "  <devices>\n"
      "    <!-- <disk type='file' device='disk'><source file='/old.img'/></disk> -->\n"
      // A self-closing element, then the real one: a regex <disk ...>...</disk> spanned both.
      "    <hostdev mode='subsystem' type='usb'/>\n"
      "    <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='2' "
      "function='3'/></source></hostdev>\n"
      "    <disk type=\"file\" device=\"disk\"><source file=\"/var/lib/a&amp;b.img\"/>"
      "<target dev=\"xvda\"/></disk>\n"
      // More attributes than type, in double quotes: a regex wanted <interface type='bridge'>.
      "    <interface type=\"bridge\" trustGuestRxFilters=\"no\"><source bridge=\"xenbr0\"/>"
      "<mac address=\"00:16:3e:00:00:01\"/></interface>\n"
      // A guest-side <address> only, no <source>: no host address to report.
      "    <hostdev mode='subsystem' type='pci'><address type='pci' domain='0' bus='0' slot='5' "
      "function='0'/></hostdev>\n"
      "  </devices>\n"
      "</domain>\n";
  const auto disks = LocalFileDisks(xml);
  REQUIRE(disks.size() == 1);
  CHECK(disks[0].path() == "/var/lib/a&b.img");
  CHECK(disks[0].target() == "xvda");
  REQUIRE(DomainDisks(xml).size() == 1);
  const auto nics = BridgeInterfaces(xml);
  REQUIRE(nics.size() == 1);
  CHECK(nics[0].bridge() == "xenbr0");
  CHECK(nics[0].mac() == "00:16:3e:00:00:01");
  CHECK(nics[0].model().empty());
  CHECK(PciHostDevices(xml) == std::vector<std::string>{"0000:01:02.3", "pci (address unknown)"});
  CHECK(XenGuestKind(xml) == "pvh");
}

TEST_CASE("libvirt_xml: the host of libvirt's capabilities XML") {
  const HostCapabilities kvm = ReadHostCapabilities(kKvmCaps);
  CHECK(kvm.uuid == "4c4c4544-0034-5a10-8052-b4c04f4e3432");
  CHECK(kvm.cpu.arch() == "x86_64");
  CHECK(kvm.cpu.model() == "Skylake-Client-IBRS");
  CHECK(kvm.cpu.vendor() == "Intel");
  CHECK(std::vector<std::string>(kvm.cpu.features().begin(), kvm.cpu.features().end()) ==
        std::vector<std::string>{"ds", "vmx", "pdcm"});
  // The <cpu> element as XML, for virConnectCompareCPU: it parses back to the same CPU, and holds
  // none of the topology's <cpu> elements.
  INFO(kvm.cpu.xml());
  auto cpu = xml::Document::Parse(kvm.cpu.xml(), "CPU XML");
  REQUIRE(cpu.ok());
  CHECK(cpu->Root().Name() == "cpu");
  CHECK(cpu->Root().Child("model").Text() == "Skylake-Client-IBRS");
  CHECK(cpu->Root().Children("feature").size() == 3);
  CHECK(cpu->Root().Child("counter").Attribute("frequency") == "2112000000");
  CHECK_FALSE(absl::StrContains(kvm.cpu.xml(), "siblings"));

  // libvirt's test driver: a host CPU with an arch and no model, vendor, features or UUID.
  const HostCapabilities test = ReadHostCapabilities(
      "<capabilities>\n  <host>\n    <cpu>\n      <arch>i686</arch>\n      <features>\n"
      "        <pae/>\n      </features>\n    </cpu>\n  </host>\n</capabilities>\n");
  CHECK(test.uuid.empty());
  CHECK(test.cpu.arch() == "i686");
  CHECK(test.cpu.model().empty());
  CHECK(test.cpu.features().empty());
  CHECK(absl::StartsWith(test.cpu.xml(), "<cpu>"));

  // Not a capabilities document: nothing.
  CHECK(ReadHostCapabilities("<domain><host><uuid>x</uuid></host></domain>").uuid.empty());
}

}  // namespace
}  // namespace livemig::driver
