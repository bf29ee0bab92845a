"""A grpcio server for a few Ameide roster methods, for the Rust SDK's interop tests.

Usage: server.py <generated-stubs-dir> <log-file>
Prints the port it listens on (127.0.0.1), then serves until killed. Every call appends
one JSON line to <log-file>: the method, the invocation metadata and time_remaining().
"""

import json
import sys
import threading
import time
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402
from google.rpc import code_pb2, error_details_pb2, status_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from ameide_core_proto.graph.v1 import graph_pb2, graph_pb2_grpc  # noqa: E402
from ameide_core_proto.inference.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402

LOG = open(sys.argv[2], "a", encoding="utf-8")
LOCK = threading.Lock()


def record(method, context):
    metadata = {}
    for key, value in context.invocation_metadata():
        if not key.endswith("-bin"):
            metadata[key] = value
    entry = {"method": method, "metadata": metadata, "time_remaining": context.time_remaining()}
    with LOCK:
        LOG.write(json.dumps(entry) + "\n")
        LOG.flush()


class Graph(graph_pb2_grpc.GraphServiceServicer):
    def __init__(self):
        self.seen = {}

    def ListRepositories(self, request, context):
        # The first attempt of every request id fails with UNAVAILABLE.
        record("ListRepositories", context)
        request_id = dict(context.invocation_metadata()).get("x-request-id", "")
        with LOCK:
            attempt = self.seen.get(request_id, 0)
            self.seen[request_id] = attempt + 1
        if attempt == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "python backend warming up")
        return graph_pb2.ListRepositoriesResponse(
            repositories=[graph_pb2.Repository(repository_id="py-1", key="from-python")]
        )

    def GetRepository(self, request, context):
        # Rich error details, the way grpcio services send them.
        record("GetRepository", context)
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(
            reason="REPOSITORY_LOCKED", domain="graph.ameide.io", metadata={"repository": request.repository_id}))
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="repository_id", description="locked for migration")]))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay={"seconds": 3}))
        status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="repository is locked",
                                   details=[info, bad, retry])
        context.abort_with_status(rpc_status.to_status(status))

    def GetElement(self, request, context):
        # Slower than any test's deadline.
        record("GetElement", context)
        time.sleep(3.0)
        return graph_pb2.GetElementResponse()

    def DeleteElement(self, request, context):
        # A status message that needs percent-encoding on the wire.
        record("DeleteElement", context)
        context.abort(grpc.StatusCode.NOT_FOUND, "tab\there\r\nline two \U0001F980 \u2713 \u00fcn\u00ef")


    def CreateElement(self, request, context):
        # Echoes the element; with `x-interop-compress: gzip` the response is
        # gzip-compressed (grpcio decompresses the request whatever it is).
        record("CreateElement", context)
        if dict(context.invocation_metadata()).get("x-interop-compress") == "gzip":
            context.set_compression(grpc.Compression.Gzip)
        return graph_pb2.CreateElementResponse(element=request.element)


class Inference(inference_pb2_grpc.InferenceServiceServicer):
    def Generate(self, request, context):
        record("Generate", context)
        for index, token in enumerate(["Hello", " from", " grpcio"]):
            yield inference_pb2.GenerateResponse(token=token, index=index)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    graph_pb2_grpc.add_GraphServiceServicer_to_server(Graph(), server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(Inference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
