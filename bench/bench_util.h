// Helpers shared by the benchmarks: the machine they ran on, statistics, and the report lines
// (figure, target, met or missed).
#ifndef LIVEMIG_BENCH_BENCH_UTIL_H_
#define LIVEMIG_BENCH_BENCH_UTIL_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace livemig::bench {

// "nproc 2, CPU <model>, RAM 7.8 GiB, load average 0.42 0.51 0.60, kernel ..., <date>".
std::string MachineLine();
// The load average over the last minute.
double LoadAverage1();

// Nearest-rank percentile (p in [0, 100]) of unsorted samples; 0 for none.
double Percentile(std::vector<double> v, double p);
// The middle value (the mean of the two middle ones for an even count); 0 for none.
double Median(std::vector<double> v);
double Min(const std::vector<double>& v);
double Max(const std::vector<double>& v);

inline double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// Prints a section title.
void Section(const std::string& title);
// Prints a line of context (indented).
void Note(const std::string& text);
// Prints a figure; with a target, "target <target_text>  MET" or "MISSED". Returns `met`.
bool Figure(const std::string& name, const std::string& value, const std::string& target_text = "",
            std::optional<bool> met = std::nullopt);

// The formatted number with `digits` decimals.
std::string Fmt(double v, int digits = 1);

// Collects every figure with a target, for the summary at the end of a benchmark.
struct Outcome {
  std::string name;
  std::string value;
  std::string target;
  bool met = false;
};
std::vector<Outcome>& Outcomes();
void PrintSummary(const std::string& benchmark);

// Command-line flags of the form --name=value or --name value; returns the default if absent.
// Command-line flags: `--name value` or `--name=value`; a flag without a value is "true".
// A benchmark reads each of its flags once with Get*/Has, giving its default and a help line,
// and then calls Done(summary): with --help (or -h) that prints the summary and every flag with
// its default and exits 0; a flag the benchmark did not read is refused (exit 2), so a typo
// cannot silently run with the defaults.
class Flags {
 public:
  Flags(int argc, char** argv);
  std::string Get(const std::string& name, const std::string& def, const std::string& help);
  int GetInt(const std::string& name, int def, const std::string& help);
  double GetDouble(const std::string& name, double def, const std::string& help);
  bool Has(const std::string& name, const std::string& help);
  void Done(const std::string& summary) const;

 private:
  void Declare(const std::string& name, const std::string& def, const std::string& help);
  std::string program_;
  bool help_ = false;
  std::map<std::string, std::string> values_;
  std::vector<std::pair<std::string, std::string>> declared_;  // name, "help (default ...)"
};

}  // namespace livemig::bench

#endif  // LIVEMIG_BENCH_BENCH_UTIL_H_
