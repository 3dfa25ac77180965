// Reading XML documents (libvirt's domain and capabilities XML) with libxml2: a parsed document,
// a small DOM walk over its elements and XPath queries. libxml2's headers stay in xml.cc (they
// need -isystem /usr/include/libxml2, which only this library's build carries).
//
//   ASSIGN_OR_RETURN(xml::Document doc, xml::Document::Parse(text, "domain XML of vm-1"));
//   for (const xml::Node& disk : doc.Root().Child("devices").Children("disk")) {
//     if (disk.Attribute("device") == "disk")
//     paths.push_back(disk.Child("source").Attribute("file"));
//   }
//
// Element and attribute names are matched on elements and attributes in no namespace (libvirt's
// own); a namespaced element (<libosinfo:os> in <metadata>) is reached by XPath with its prefix
// bound, or by Elements(). Values come back decoded (&amp; &apos; &#x41; ...). Parsing never
// touches the network and does not load external entities.
#ifndef LIVEMIG_DRIVER_XML_H_
#define LIVEMIG_DRIVER_XML_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct _xmlDoc;   // libxml2's xmlDoc
struct _xmlNode;  // libxml2's xmlNode

namespace livemig::driver::xml {

// XPath namespace bindings: {prefix, URI}.
using Namespaces = std::vector<std::pair<std::string, std::string>>;

// An element of a parsed document (it keeps the document alive), or a null node: what Child()
// gives when there is no such child. A null node answers "" / false / empty to everything, so
// chains like doc.Root().Child("os").Child("type").Text() need no checks.
class Node {
 public:
  Node() = default;

  bool null() const { return node_ == nullptr; }
  explicit operator bool() const { return node_ != nullptr; }

  // The element's local name ("disk" for <disk>, "os" for <libosinfo:os>); its namespace URI
  // ("" when none).
  std::string Name() const;
  std::string NamespaceUri() const;

  // The value of the attribute `name` (in no namespace), decoded; "" when absent.
  std::string Attribute(absl::string_view name) const;
  bool HasAttribute(absl::string_view name) const;

  // The text content: every text descendant, concatenated and decoded (comments excluded).
  std::string Text() const;

  // The child elements in no namespace named `name`, in document order; the first such (a null
  // node when none); whether there is one.
  std::vector<Node> Children(absl::string_view name) const;
  Node Child(absl::string_view name) const;
  bool HasChild(absl::string_view name) const { return !Child(name).null(); }
  // Every child element, whatever its name and namespace.
  std::vector<Node> Elements() const;

  // The element serialized as XML (its subtree, as libxml2 writes it: attributes in double
  // quotes, text re-escaped; the whitespace between elements kept).
  std::string Serialize() const;

  // The element nodes an XPath 1.0 expression selects from this node ("devices/disk",
  // "//hostdev[@type='pci']"); InvalidArgument naming the expression when it is not valid XPath
  // or does not select nodes. Prefixes used in `xpath` must be bound in `ns`.
  absl::StatusOr<std::vector<Node>> Select(const std::string& xpath,
                                           const Namespaces& ns = {}) const;
  // The XPath string value of an expression ("string(@type)", "count(devices/disk)", or a path:
  // the text of the first node selected, "" when none).
  absl::StatusOr<std::string> SelectString(const std::string& xpath,
                                           const Namespaces& ns = {}) const;

 private:
  friend class Document;
  Node(std::shared_ptr<_xmlDoc> doc, _xmlNode* node) : doc_(std::move(doc)), node_(node) {}

  std::shared_ptr<_xmlDoc> doc_;
  _xmlNode* node_ = nullptr;
};

// A parsed, well-formed XML document (not validated against a schema).
class Document {
 public:
  // Parses `text`. `what` names the document in errors ("domain XML of vm-1", "capabilities
  // XML"). InvalidArgument "cannot parse <what>: line L, column C: <libxml2's message>" when
  // the text is not well-formed XML (an empty text included).
  static absl::StatusOr<Document> Parse(absl::string_view text, absl::string_view what);

  // The root element.
  Node Root() const;

  // XPath from the document node ("/domain/devices/disk"); see Node::Select.
  absl::StatusOr<std::vector<Node>> Select(const std::string& xpath,
                                           const Namespaces& ns = {}) const;
  absl::StatusOr<std::string> SelectString(const std::string& xpath,
                                           const Namespaces& ns = {}) const;

 private:
  explicit Document(std::shared_ptr<_xmlDoc> doc) : doc_(std::move(doc)) {}
  Node DocumentNode() const;

  std::shared_ptr<_xmlDoc> doc_;
};

}  // namespace livemig::driver::xml

#endif  // LIVEMIG_DRIVER_XML_H_
