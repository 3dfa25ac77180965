#include "common/grpc_limits.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/resource_quota.h"

namespace livemig {

absl::Status ValidateServerLimits(const ServerLimits& l) {
  auto out_of_range = [](const char* what, int64_t v, int64_t lo, int64_t hi) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be ", lo, " to ", hi, ", got ", v));
  };
  if (l.max_threads < 4 || l.max_threads > 100000) {
    return out_of_range("gRPC max threads", l.max_threads, 4, 100000);
  }
  if (l.max_memory_bytes < (int64_t{16} << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gRPC memory must be at least 16 MiB, got ", l.max_memory_bytes, " bytes"));
  }
  if (l.max_concurrent_streams < 1 || l.max_concurrent_streams > 100000) {
    return out_of_range("gRPC max concurrent streams per connection", l.max_concurrent_streams, 1,
                        100000);
  }
  if (l.max_receive_message_bytes < 1024 || l.max_receive_message_bytes > (1 << 30)) {
    return out_of_range("gRPC max receive message bytes", l.max_receive_message_bytes, 1024,
                        1 << 30);
  }
  return absl::OkStatus();
}

void ApplyServerLimits(grpc::ServerBuilder& builder, const ServerLimits& l) {
  // The builder keeps its own reference to the quota (grpc_resource_quota_ref).
  grpc::ResourceQuota quota(l.name);
  quota.SetMaxThreads(l.max_threads);
  quota.Resize(static_cast<size_t>(l.max_memory_bytes));
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, l.max_concurrent_streams);
  builder.SetMaxReceiveMessageSize(l.max_receive_message_bytes);
}

}  // namespace livemig
