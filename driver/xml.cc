#include "driver/xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include <climits>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace livemig::driver::xml {
namespace {

// libxml2 asks multi-threaded programs to initialise it once before any use.
void InitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { xmlInitParser(); });
}

const xmlChar* X(const std::string& s) { return reinterpret_cast<const xmlChar*>(s.c_str()); }

// A libxml2-allocated string as a std::string, freed.
std::string Take(xmlChar* s) {
  if (s == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(s));
  xmlFree(s);
  return out;
}

bool IsPlainElement(const xmlNode* n, absl::string_view name) {
  return n->type == XML_ELEMENT_NODE && n->ns == nullptr &&
         name == reinterpret_cast<const char*>(n->name);
}

// Collects the messages of XPath errors (libxml2 would print them to stderr).
void CollectXPathError(void* user, xmlErrorPtr err) {
  auto* out = static_cast<std::string*>(user);
  if (err != nullptr && err->message != nullptr && out->empty()) {
    *out = std::string(absl::StripTrailingAsciiWhitespace(err->message));
  }
}

// Evaluates `xpath` from `node` of `doc`; the result (freed by the caller) or InvalidArgument.
absl::StatusOr<xmlXPathObjectPtr> Eval(xmlDoc* doc, xmlNode* node, const std::string& xpath,
                                       const Namespaces& ns) {
  if (doc == nullptr || node == nullptr) return absl::InvalidArgumentError("XPath on a null node");
  std::unique_ptr<xmlXPathContext, void (*)(xmlXPathContextPtr)> ctx(xmlXPathNewContext(doc),
                                                                     xmlXPathFreeContext);
  if (ctx == nullptr) return absl::ResourceExhaustedError("xmlXPathNewContext failed");
  // XPath errors go to the thread's structured error handler (libxml2 would print them): taken
  // here for the time of the evaluation.
  std::string error;
  struct Restore {
    xmlStructuredErrorFunc func = xmlStructuredError;
    void* data = xmlStructuredErrorContext;
    ~Restore() { xmlSetStructuredErrorFunc(data, func); }
  } restore;
  xmlSetStructuredErrorFunc(&error, CollectXPathError);
  ctx->node = node;
  for (const auto& [prefix, uri] : ns) {
    if (xmlXPathRegisterNs(ctx.get(), X(prefix), X(uri)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot bind XPath namespace prefix '", prefix, "' to '", uri, "'"));
    }
  }
  xmlXPathObjectPtr r = xmlXPathEvalExpression(X(xpath), ctx.get());
  if (r == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("invalid XPath expression '", xpath,
                                                   "': ", error.empty() ? "no result" : error));
  }
  return r;
}

// The first error of a parse (libxml2 keeps only the last, often "Premature end of data" after
// the error that matters). Reached through the parser context's _private.
struct FirstError {
  bool set = false;
  int line = 0, column = 0;
  std::string message;
};

void KeepFirstError(void* /*user*/, xmlErrorPtr err) {
  if (err == nullptr || err->ctxt == nullptr || err->level < XML_ERR_ERROR) return;
  auto* first = static_cast<FirstError*>(static_cast<xmlParserCtxtPtr>(err->ctxt)->_private);
  if (first == nullptr || first->set) return;
  first->set = true;
  first->line = err->line;
  first->column = err->int2;
  first->message = err->message == nullptr
                       ? "unknown error"
                       : std::string(absl::StripTrailingAsciiWhitespace(err->message));
}

}  // namespace

std::string Node::Name() const {
  return node_ == nullptr ? "" : reinterpret_cast<const char*>(node_->name);
}

std::string Node::NamespaceUri() const {
  if (node_ == nullptr || node_->ns == nullptr || node_->ns->href == nullptr) return "";
  return reinterpret_cast<const char*>(node_->ns->href);
}

std::string Node::Attribute(absl::string_view name) const {
  if (node_ == nullptr) return "";
  return Take(xmlGetNoNsProp(node_, X(std::string(name))));
}

bool Node::HasAttribute(absl::string_view name) const {
  return node_ != nullptr && xmlHasNsProp(node_, X(std::string(name)), nullptr) != nullptr;
}

std::string Node::Text() const { return node_ == nullptr ? "" : Take(xmlNodeGetContent(node_)); }

std::vector<Node> Node::Children(absl::string_view name) const {
  std::vector<Node> out;
  if (node_ == nullptr) return out;
  for (xmlNode* c = node_->children; c != nullptr; c = c->next) {
    if (IsPlainElement(c, name)) out.push_back(Node(doc_, c));
  }
  return out;
}

Node Node::Child(absl::string_view name) const {
  if (node_ == nullptr) return Node();
  for (xmlNode* c = node_->children; c != nullptr; c = c->next) {
    if (IsPlainElement(c, name)) return Node(doc_, c);
  }
  return Node();
}

std::vector<Node> Node::Elements() const {
  std::vector<Node> out;
  if (node_ == nullptr) return out;
  for (xmlNode* c = node_->children; c != nullptr; c = c->next) {
    if (c->type == XML_ELEMENT_NODE) out.push_back(Node(doc_, c));
  }
  return out;
}

std::string Node::Serialize() const {
  if (node_ == nullptr) return "";
  std::unique_ptr<xmlBuffer, void (*)(xmlBufferPtr)> buf(xmlBufferCreate(), xmlBufferFree);
  if (buf == nullptr || xmlNodeDump(buf.get(), doc_.get(), node_, 0, 0) < 0) return "";
  return std::string(reinterpret_cast<const char*>(xmlBufferContent(buf.get())),
                     xmlBufferLength(buf.get()));
}

absl::StatusOr<std::vector<Node>> Node::Select(const std::string& xpath,
                                               const Namespaces& ns) const {
  auto r = Eval(doc_.get(), node_, xpath, ns);
  if (!r.ok()) return r.status();
  std::unique_ptr<xmlXPathObject, void (*)(xmlXPathObjectPtr)> obj(*r, xmlXPathFreeObject);
  if (obj->type != XPATH_NODESET) {
    return absl::InvalidArgumentError(
        absl::StrCat("XPath expression '", xpath, "' gives a value, not nodes"));
  }
  std::vector<Node> out;
  if (obj->nodesetval == nullptr) return out;
  for (int i = 0; i < obj->nodesetval->nodeNr; ++i) {
    xmlNode* n = obj->nodesetval->nodeTab[i];
    if (n->type == XML_ELEMENT_NODE) out.push_back(Node(doc_, n));
  }
  return out;
}

absl::StatusOr<std::string> Node::SelectString(const std::string& xpath,
                                               const Namespaces& ns) const {
  auto r = Eval(doc_.get(), node_, xpath, ns);
  if (!r.ok()) return r.status();
  std::unique_ptr<xmlXPathObject, void (*)(xmlXPathObjectPtr)> obj(*r, xmlXPathFreeObject);
  return Take(xmlXPathCastToString(obj.get()));
}

absl::StatusOr<Document> Document::Parse(absl::string_view text, absl::string_view what) {
  InitOnce();
  if (text.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot parse ", what, ": ", text.size(), " bytes is too long"));
  }
  std::unique_ptr<xmlParserCtxt, void (*)(xmlParserCtxtPtr)> ctxt(xmlNewParserCtxt(),
                                                                  xmlFreeParserCtxt);
  if (ctxt == nullptr) return absl::ResourceExhaustedError("xmlNewParserCtxt failed");
  // The errors come back in the status, not on stderr.
  FirstError first;
  ctxt->_private = &first;
  ctxt->sax->serror = KeepFirstError;
  // No network, no external entities or DTD loading (the default), no messages on stderr.
  const int options = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
  xmlDoc* doc = xmlCtxtReadMemory(ctxt.get(), text.data(), static_cast<int>(text.size()), nullptr,
                                  nullptr, options);
  if (doc == nullptr || xmlDocGetRootElement(doc) == nullptr) {
    if (doc != nullptr) xmlFreeDoc(doc);
    if (!first.set) {
      const xmlError* err = xmlCtxtGetLastError(ctxt.get());
      if (err != nullptr && err->message != nullptr) {
        first.set = true;
        first.line = err->line;
        first.column = err->int2;
        first.message = std::string(absl::StripTrailingAsciiWhitespace(err->message));
      }
    }
    if (!first.set) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot parse ", what, ": ", text.empty() ? "empty document" : "no root element"));
    }
    return absl::InvalidArgumentError(absl::StrCat("cannot parse ", what, ": line ", first.line,
                                                   ", column ", first.column, ": ", first.message));
  }
  return Document(std::shared_ptr<_xmlDoc>(doc, xmlFreeDoc));
}

Node Document::Root() const { return Node(doc_, xmlDocGetRootElement(doc_.get())); }

Node Document::DocumentNode() const { return Node(doc_, reinterpret_cast<xmlNode*>(doc_.get())); }

absl::StatusOr<std::vector<Node>> Document::Select(const std::string& xpath,
                                                   const Namespaces& ns) const {
  return DocumentNode().Select(xpath, ns);
}

absl::StatusOr<std::string> Document::SelectString(const std::string& xpath,
                                                   const Namespaces& ns) const {
  return DocumentNode().SelectString(xpath, ns);
}

}  // namespace livemig::driver::xml
