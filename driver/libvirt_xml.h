// What the libvirt driver reads from libvirt's XML documents (the domain definition of
// virDomainGetXMLDesc and the host capabilities of virConnectGetCapabilities), read with the XML
// parser of driver/xml.h. Each reader follows libvirt's structure (/domain/devices/disk, not a
// <disk> anywhere in the text): comments, <metadata> of other namespaces and look-alike elements
// elsewhere are not read. A document that does not parse reads as empty ("" / no items), as a
// document without the element does (xml::Document::Parse says why it does not parse).
#ifndef LIVEMIG_DRIVER_LIBVIRT_XML_H_
#define LIVEMIG_DRIVER_LIBVIRT_XML_H_

#include <string>
#include <vector>

#include "driver/compute_driver.h"

namespace livemig::driver {

// ---- Domain XML
// ----------------------------------------------------------------------------------

// The PCI devices a libvirt domain definition passes through from the host (<hostdev
// type='pci'> with its <source><address>), as domain:bus:slot.function (DomainInfo.host_devices);
// "pci (address unknown)" for one without a source address.
std::vector<std::string> PciHostDevices(const std::string& domain_xml);

// The local file disks of a libvirt domain definition that block migration copies: <disk
// type='file' device='disk'> with a <source file>, neither <readonly/> nor <shareable/>. Each with
// its path, format (<driver type>, "raw" when absent) and target; virtual_size_bytes left 0.
std::vector<cv1::LocalDisk> LocalFileDisks(const std::string& domain_xml);

// Every disk of a libvirt domain definition (<disk> with device disk, cdrom or lun): its type,
// source (file, dev, network name or volume), target and read-only flag; kind FILE for a file,
// BLOCK for a block device, OTHER for network and pool volumes (Volumes::Describe tells iSCSI
// and DRBD apart).
std::vector<v1::DomainDisk> DomainDisks(const std::string& domain_xml);

// The bridged interfaces of a libvirt domain definition (<interface type='bridge'>): bridge
// (<source bridge>), MAC (<mac address>) and model (<model type>), each "" when absent.
std::vector<v1::DomainInterface> BridgeInterfaces(const std::string& domain_xml);

// The Xen guest kind of a libvirt domain definition (DomainInfo.guest_kind): "pv", "pvh", "hvm",
// or "" when it is not a Xen domain (<domain type='xen'>) or its <os><type> says none of these.
std::string XenGuestKind(const std::string& domain_xml);

// ---- Capabilities XML
// ----------------------------------------------------------------------------

// The host of a capabilities document: its UUID (<host><uuid>) and CPU (<host><cpu>: arch, model,
// vendor, the <feature name> list in document order, and the <cpu> element serialized as the
// CPU's xml, for virConnectCompareCPU on another host). Empty fields where the document has none.
struct HostCapabilities {
  std::string uuid;
  v1::CpuInfo cpu;
};
HostCapabilities ReadHostCapabilities(const std::string& capabilities_xml);

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_LIBVIRT_XML_H_
