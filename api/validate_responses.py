#!/usr/bin/python3
"""Validates recorded HTTP answers against an OpenAPI document's response schemas.

Usage: validate_responses.py <openapi.json> <records.jsonl>

Each line of records.jsonl is one answer:
  {"method": "GET", "path": "/v1/migrations?limit=5", "status": 200,
   "content_type": "application/json", "body": "..."}
The path (its query dropped) is matched to the document's path templates (a literal segment wins
over a {parameter}); the answer's schema is responses[status] (else responses.default) for its
content type, $refs resolved. A path the document lacks must be an error answer, validated
against components.schemas.Error. JSON bodies are validated with Debian's python3-jsonschema
(formats uuid and date-time checked); OpenAPI 3.0's `nullable` and 3.1's type lists both work.
Prints every mismatch and exits 1 when there is any; 0 and a count otherwise.
"""
import copy
import json
import re
import sys

import jsonschema

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def format_checker():
    checker = jsonschema.FormatChecker([])
    checker.checks("date-time")(lambda v: not isinstance(v, str) or bool(RFC3339.match(v)))
    checker.checks("uuid")(lambda v: not isinstance(v, str) or bool(UUID.match(v)))
    return checker


def nullable_to_types(node):
    """OpenAPI 3.0's `nullable: true` as JSON Schema's type list (3.1 documents have lists)."""
    if isinstance(node, dict):
        out = {k: nullable_to_types(v) for k, v in node.items()}
        if out.pop("nullable", False) and "type" in out:
            t = out["type"]
            out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
        return out
    if isinstance(node, list):
        return [nullable_to_types(v) for v in node]
    return node


class Document:
    def __init__(self, doc):
        self.doc = nullable_to_types(doc)
        self.resolver = jsonschema.RefResolver.from_schema(self.doc)
        self.checker = format_checker()
        self.templates = []
        for template in self.doc.get("paths", {}):
            segs = template.strip("/").split("/")
            self.templates.append((template, segs))

    def deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            _, node = self.resolver.resolve(node["$ref"])
        return node

    def match(self, path):
        segs = path.split("?", 1)[0].strip("/").split("/")
        best = None
        for template, tsegs in self.templates:
            if len(tsegs) != len(segs):
                continue
            params = 0
            for t, s in zip(tsegs, segs):
                if t.startswith("{") and t.endswith("}"):
                    if not s:
                        break
                    params += 1
                elif t != s:
                    break
            else:
                if best is None or params < best[1]:
                    best = (template, params)
        return best[0] if best else None

    def errors(self, schema, value):
        v = jsonschema.Draft7Validator(schema, resolver=self.resolver,
                                       format_checker=self.checker)
        for e in sorted(v.iter_errors(value), key=lambda e: list(e.absolute_path)):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
            yield f"at body{where}: {e.message}"

    def check(self, rec):
        """The mismatches of one recorded answer (an empty list when it conforms)."""
        method, path, status = rec["method"].lower(), rec["path"], int(rec["status"])
        ctype = rec.get("content_type", "").split(";")[0].strip().lower()
        template = self.match(path)
        if template is None or method not in self.doc["paths"][template]:
            if status < 400:
                return [f"{status} for an operation the document lacks"]
            schema = {"$ref": "#/components/schemas/Error"}
        else:
            responses = self.doc["paths"][template][method].get("responses", {})
            response = responses.get(str(status), responses.get("default"))
            if response is None:
                return [f"status {status} is not documented for {method.upper()} {template}"
                        f" (documented: {', '.join(sorted(responses))})"]
            response = self.deref(response)
            content = response.get("content")
            if not content:
                return []  # no body documented
            if ctype not in content:
                return [f"content type '{ctype}' is not documented "
                        f"(documented: {', '.join(sorted(content))})"]
            schema = content[ctype].get("schema")
            if schema is None or "json" not in ctype:
                return []
        if ctype != "application/json":
            return [f"content type '{ctype}', expected application/json"]
        try:
            body = json.loads(rec["body"])
        except ValueError as e:
            return [f"body is not JSON ({e}): {rec['body'][:200]!r}"]
        return list(self.errors(schema, body))


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        doc = Document(json.load(f))
    mismatches = []
    count = 0
    with open(argv[2]) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            count += 1
            for m in doc.check(rec):
                mismatches.append(f"{rec['method']} {rec['path']} -> {rec['status']}: {m}")
    for m in mismatches:
        print("MISMATCH " + m)
    if count == 0:
        print(f"no answers recorded in {argv[2]}")
        return 1
    if mismatches:
        print(f"{len(mismatches)} mismatch(es) in {count} answers against {argv[1]}")
        return 1
    print(f"{count} answers match {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
