// Small helpers for absl::Status propagation (Abseil 20220623 ships no status macros).
//
//   RETURN_IF_ERROR(store.Apply());
//   ASSIGN_OR_RETURN(auto host, store.GetHost(name));
#ifndef LIVEMIG_COMMON_STATUS_MACROS_H_
#define LIVEMIG_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LIVEMIG_CONCAT_INNER_(a, b) a##b
#define LIVEMIG_CONCAT_(a, b) LIVEMIG_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status livemig_status_ = (expr);           \
    if (!livemig_status_.ok()) return livemig_status_; \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(LIVEMIG_CONCAT_(livemig_statusor_, __LINE__), lhs, expr)

#endif  // LIVEMIG_COMMON_STATUS_MACROS_H_
