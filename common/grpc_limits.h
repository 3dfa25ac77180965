// The bounds every gRPC server of the system runs with (the scheduler's API and host registry,
// the compute agent): whatever its clients do, a server uses at most `max_threads` threads and
// about `max_memory_bytes` of gRPC buffers, serves at most `max_concurrent_streams` calls at once
// on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: more wait on the client's side), and
// refuses a request message over `max_receive_message_bytes` (RESOURCE_EXHAUSTED).
//
// A call that arrives while every thread is busy is answered RESOURCE_EXHAUSTED at once by gRPC
// ("Server Threadpool Exhausted"), never queued without bound; long-lived calls (server
// streams) therefore need caps of their own below `max_threads` (the scheduler's WatchMigration
// caps, services.h), so that short calls always find a thread.
#ifndef LIVEMIG_COMMON_GRPC_LIMITS_H_
#define LIVEMIG_COMMON_GRPC_LIMITS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/server_builder.h"

namespace livemig {

struct ServerLimits {
  // Name of the server's resource quota (shows in gRPC's traces).
  std::string name = "livemig";
  // Threads of the synchronous server (pollers and handlers), grpc::ResourceQuota::SetMaxThreads.
  int max_threads = 64;
  // Memory for gRPC's buffers, grpc::ResourceQuota::Resize.
  int64_t max_memory_bytes = int64_t{256} << 20;
  // Calls in flight on one connection (GRPC_ARG_MAX_CONCURRENT_STREAMS).
  int max_concurrent_streams = 100;
  // Largest request message accepted (ServerBuilder::SetMaxReceiveMessageSize).
  int max_receive_message_bytes = 4 << 20;
};

// InvalidArgument naming the field when a limit is out of range (threads 4..100000, memory at
// least 16 MiB, streams 1..100000, messages 1 KiB..1 GiB).
absl::Status ValidateServerLimits(const ServerLimits& limits);

// Applies every limit to `builder` (its own resource quota, the stream cap, the message size).
// Call before BuildAndStart; `limits` should have passed ValidateServerLimits.
void ApplyServerLimits(grpc::ServerBuilder& builder, const ServerLimits& limits);

}  // namespace livemig

#endif  // LIVEMIG_COMMON_GRPC_LIMITS_H_
