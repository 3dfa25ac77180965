"""cc_grpc_proto: C++ message and gRPC stubs for one .proto, from Debian's protoc."""

def cc_grpc_proto(name, src, deps = []):
    base = src[:-len(".proto")]
    outs = [base + ext for ext in [".pb.h", ".pb.cc", ".grpc.pb.h", ".grpc.pb.cc"]]
    native.genrule(
        name = name + "_gen",
        srcs = [src],
        outs = outs,
        cmd = ("/usr/bin/protoc --proto_path=. --proto_path=/usr/include " +
               "--cpp_out=$(GENDIR) --grpc_out=$(GENDIR) " +
               "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin $(location " + src + ")"),
        # protoc reads the imported .proto files from the source tree.
        tools = native.glob(["*.proto"]),
    )
    native.cc_library(
        name = name,
        srcs = [base + ".pb.cc", base + ".grpc.pb.cc"],
        hdrs = [base + ".pb.h", base + ".grpc.pb.h"],
        deps = deps + ["//third_party/sys:grpc"],
    )
