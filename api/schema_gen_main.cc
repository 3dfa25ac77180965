// schema_gen: rewrites (or, with --check, verifies) the generated schemas of an OpenAPI
// document. Usage: schema_gen [--check] <openapi.json>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "api/schema_gen.h"

int main(int argc, char** argv) {
  const bool check = argc == 3 && std::string(argv[1]) == "--check";
  if (argc != 2 && !check) {
    std::cerr << "usage: schema_gen [--check] <openapi.json>\n";
    return 2;
  }
  const std::string path = argv[argc - 1];
  std::ifstream in(path);
  if (!in) {
    std::cerr << "schema_gen: cannot read " << path << "\n";
    return 2;
  }
  std::stringstream text;
  text << in.rdbuf();
  try {
    const nlohmann::ordered_json doc = nlohmann::ordered_json::parse(text.str());
    const std::string want = livemig::api::WithProtoSchemas(doc).dump(2) + "\n";
    if (check) {
      if (text.str() == want) return 0;
      std::cerr << "schema_gen: " << path
                << " differs from the schemas generated from proto/ (or is not formatted as "
                   "the generator writes it); run: bazel run //api:schema_gen -- "
                   "$PWD/api/openapi.json\n";
      return 1;
    }
    std::ofstream(path) << want;
  } catch (const std::exception& e) {
    std::cerr << "schema_gen: " << path << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
