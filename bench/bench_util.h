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
class Flags {
 public:
  Flags(int argc, char** argv);
  std::string Get(const std::string& name, const std::string& def) const;
  int GetInt(const std::string& name, int def) const;
  double GetDouble(const std::string& name, double def) const;
  bool Has(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace livemig::bench

#endif  // LIVEMIG_BENCH_BENCH_UTIL_H_
