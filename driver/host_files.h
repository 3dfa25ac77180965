// Small helpers the drivers share for the files and commands of their host.
#ifndef LIVEMIG_DRIVER_HOST_FILES_H_
#define LIVEMIG_DRIVER_HOST_FILES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace livemig::driver {

// `s` as one sh word, whatever it holds.
std::string ShellQuote(const std::string& s);

// The non-empty lines of a file (none when it does not exist).
std::vector<std::string> ReadLines(const std::string& path);

// Replaces a file with `lines` atomically (a temporary file renamed over it).
absl::Status WriteLines(const std::string& path, const std::vector<std::string>& lines);

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_HOST_FILES_H_
