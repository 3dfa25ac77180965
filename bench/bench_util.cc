#include "bench/bench_util.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace livemig::bench {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string CpuModel() {
  std::istringstream in(ReadFile("/proc/cpuinfo"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
  }
  return "unknown";
}

double MemTotalGiB() {
  std::istringstream in(ReadFile("/proc/meminfo"));
  std::string key;
  long kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemTotal:") return kib / 1024.0 / 1024.0;
  }
  return 0;
}

}  // namespace

double LoadAverage1() {
  std::istringstream in(ReadFile("/proc/loadavg"));
  double l = 0;
  in >> l;
  return l;
}

std::string MachineLine() {
  std::istringstream la(ReadFile("/proc/loadavg"));
  std::string l1, l5, l15;
  la >> l1 >> l5 >> l15;
  struct utsname u;
  uname(&u);
  return absl::StrFormat(
      "machine: nproc %d, CPU %s, RAM %.1f GiB, load average %s %s %s (1/5/15 min) at start, "
      "kernel %s, %s",
      static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)), CpuModel(), MemTotalGiB(), l1, l5, l15,
      u.release, absl::FormatTime("%Y-%m-%d %H:%M:%S %Z", absl::Now(), absl::LocalTimeZone()));
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Nearest rank: the smallest value with at least p% of the samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  if (rank < 1) rank = 1;
  if (rank > v.size()) rank = v.size();
  return v[rank - 1];
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Min(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}
double Max(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}

std::string Fmt(double v, int digits) { return absl::StrFormat("%.*f", digits, v); }

void Section(const std::string& title) { std::cout << "\n== " << title << "\n" << std::flush; }

void Note(const std::string& text) { std::cout << "   " << text << "\n" << std::flush; }

std::vector<Outcome>& Outcomes() {
  static auto* o = new std::vector<Outcome>;
  return *o;
}

bool Figure(const std::string& name, const std::string& value, const std::string& target_text,
            std::optional<bool> met) {
  std::string line = absl::StrFormat("   %-44s %s", name, value);
  if (met.has_value()) {
    line = absl::StrFormat("%-86s target %s  %s", line, target_text, *met ? "MET" : "MISSED");
    Outcomes().push_back({name, value, target_text, *met});
  }
  std::cout << line << "\n" << std::flush;
  return met.value_or(true);
}

void PrintSummary(const std::string& benchmark) {
  int met = 0;
  for (const auto& o : Outcomes()) met += o.met ? 1 : 0;
  std::cout << "\n-- " << benchmark << ": " << met << " of " << Outcomes().size()
            << " targets met\n";
  for (const auto& o : Outcomes()) {
    std::cout << absl::StrFormat("   %-6s %s = %s (target %s)\n", o.met ? "MET" : "MISSED", o.name,
                                 o.value, o.target);
  }
  std::cout << std::flush;
}

Flags::Flags(int argc, char** argv) : program_(argc > 0 ? argv[0] : "benchmark") {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      std::cerr << "unexpected argument '" << a << "' (flags are --name value; see --help)\n";
      std::exit(2);
    }
    a = a.substr(2);
    auto eq = a.find('=');
    if (eq != std::string::npos) {
      values_[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
      values_[a] = argv[++i];
    } else {
      values_[a] = "true";
    }
  }
}

void Flags::Declare(const std::string& name, const std::string& def, const std::string& help) {
  for (const auto& d : declared_) {
    if (d.first == name) return;
  }
  declared_.emplace_back(name, def.empty() ? help : absl::StrCat(help, " (default ", def, ")"));
}

void Flags::Done(const std::string& summary) const {
  if (help_) {
    std::cout << "usage: " << program_ << " [flags]\n\n" << summary << "\n\nflags:\n";
    for (const auto& [name, help] : declared_) {
      std::cout << absl::StrFormat("  --%-18s %s\n", name, help);
    }
    std::cout << "  --help               this text\n";
    std::exit(0);
  }
  for (const auto& [name, value] : values_) {
    bool known = false;
    for (const auto& d : declared_) known = known || d.first == name;
    if (!known) {
      std::cerr << "unknown flag --" << name << " (see --help for this benchmark's flags)\n";
      std::exit(2);
    }
  }
}

std::string Flags::Get(const std::string& name, const std::string& def, const std::string& help) {
  Declare(name, def, help);
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

int Flags::GetInt(const std::string& name, int def, const std::string& help) {
  Declare(name, absl::StrCat(def), help);
  int v = def;
  auto it = values_.find(name);
  if (it != values_.end() && !absl::SimpleAtoi(it->second, &v)) {
    std::cerr << "bad value for --" << name << ": " << it->second << "\n";
    std::exit(2);
  }
  return v;
}

double Flags::GetDouble(const std::string& name, double def, const std::string& help) {
  Declare(name, absl::StrCat(def), help);
  double v = def;
  auto it = values_.find(name);
  if (it != values_.end() && !absl::SimpleAtod(it->second, &v)) {
    std::cerr << "bad value for --" << name << ": " << it->second << "\n";
    std::exit(2);
  }
  return v;
}

bool Flags::Has(const std::string& name, const std::string& help) {
  Declare(name, "", help);
  return values_.count(name) > 0;
}

}  // namespace livemig::bench
