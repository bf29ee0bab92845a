"""A grpcio client calling a Rust server built on ameide-sdk's inbound layer.

Usage: client.py <generated-stubs-dir> <port>
Calls GraphService.GetRepository with tenant, user and a request id, and prints one
JSON line: the response and the response metadata the server sent back.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402

from ameide_core_proto.graph.v1 import graph_pb2, graph_pb2_grpc  # noqa: E402


def main():
    with grpc.insecure_channel(f"127.0.0.1:{sys.argv[2]}") as channel:
        stub = graph_pb2_grpc.GraphServiceStub(channel)
        response, call = stub.GetRepository.with_call(
            graph_pb2.GetRepositoryRequest(repository_id="repo-from-python"),
            metadata=[("x-tenant-id", "tenant-py"), ("x-user-id", "user-py"), ("x-request-id", "py-req-1"),
                      ("baggage", "ameide.session_id=py-session")],
            timeout=2.5,
        )
        initial = {k: v for k, v in call.initial_metadata()}
        # A call without a request id: the server generates one and echoes it.
        _, second = stub.GetRepository.with_call(graph_pb2.GetRepositoryRequest(repository_id="r2"), timeout=2.5)
        generated = {k: v for k, v in second.initial_metadata()}.get("x-request-id")
    print(json.dumps({
        "repository_id": response.repository.repository_id,
        "key": response.repository.key,
        "description": response.repository.description,
        "echoed_request_id": initial.get("x-request-id"),
        "generated_request_id": generated,
    }), flush=True)


if __name__ == "__main__":
    main()
