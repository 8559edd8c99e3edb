"""protoc plugin that runs grpcio-tools' built-in grpc_python generator.

grpcio-tools compiles the gRPC Python generator into its bundled protoc
(``--grpc_python_out``) instead of shipping ``grpc_python_plugin``, and buf can
only drive protoc built-ins it knows by name. This plugin takes buf's
CodeGeneratorRequest on stdin, hands the request's files (with their comments,
which become docstrings) to that protoc as a descriptor set, and returns the
files it wrote as a CodeGeneratorResponse on stdout.
"""

from __future__ import annotations

import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL,
    )
    # proto_file is in dependency order and carries source info, as protoc
    # itself would pass it to the generator.
    descriptor_set = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
    with tempfile.TemporaryDirectory(prefix="grpc-python-plugin-") as tmp:
        set_path = os.path.join(tmp, "request.binpb")
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)
        with open(set_path, "wb") as f:
            f.write(descriptor_set.SerializeToString(deterministic=True))
        args = ["protoc", f"--descriptor_set_in={set_path}", f"--grpc_python_out={out_dir}"]
        if request.parameter:
            args.append(f"--grpc_python_opt={request.parameter}")
        args.extend(request.file_to_generate)
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc --grpc_python_out failed (see its message above)"
            return response
        for root, dirs, files in os.walk(out_dir):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    content = f.read()
                rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
                response.file.add(name=rel, content=content)
    return response


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = generate(request)
    sys.stdout.buffer.write(response.SerializeToString(deterministic=True))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
