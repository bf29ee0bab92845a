"""A thin parity adapter over plain grpcio: the worked example of docs/parity.md.

THIN ON PURPOSE. This is not an Ameide SDK: it sends the contract's metadata
and a deadline, and nothing else an SDK does (no retries, no tracing, no
roster, no request-id or attempt bookkeeping beyond what it sent). The parity
suite must tell it from a conforming SDK, so `known-failing.txt` next to this
file lists exactly the cases it fails; CI runs it and fails on any other
result (an unexpected FAIL, or an XPASS).

Usage:
    python3 adapter.py --descriptors FILE
FILE is the bundle's FileDescriptorSet (`ameide-parity descriptor-set FILE`
writes it). Needs grpcio and grpcio-status (pip). Reads one request per line
on stdin, writes one outcome per line on stdout, logs on stderr, and exits
when stdin ends.
"""

import argparse
import json
import sys
import time
import uuid

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

CONTRACT_TIMEOUT_MS = 5000


def load_pool(path):
    files = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def guess_path(key, method):
    # Thin: no roster. Guess `/ameide_core_proto.<key>.v1.<Key>Service/<Method>`
    # (right for one-word keys, wrong for grouped keys like `platform.organizations`).
    pascal = "".join(w[:1].upper() + w[1:] for w in key.replace(".", "_").split("_"))
    return f"/ameide_core_proto.{key}.v1.{pascal}Service/{method}"


def metadata_of(client, call):
    md = []
    if client.get("tenant_id"):
        md.append(("x-tenant-id", client["tenant_id"]))
    if client.get("user_id"):
        md.append(("x-user-id", client["user_id"]))
    for name, value in (client.get("headers") or {}).items():
        md.append((name.lower(), value))
    request_id = call.get("request_id") or str(uuid.uuid4())
    md.append(("x-request-id", request_id))
    if client.get("session_id"):
        md.append(("baggage", "ameide.session_id=" + client["session_id"]))
    token = client.get("token") or {"kind": "none"}
    if token["kind"] == "static" and token.get("value"):
        md.append(("authorization", "Bearer " + token["value"]))
    return md, request_id, token


def details_of(error):
    out = []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for any_detail in (status.details if status else []):
        for kind in ("ErrorInfo", "RetryInfo", "BadRequest"):
            if any_detail.type_url.endswith("google.rpc." + kind):
                message = getattr(error_details_pb2, kind)()
                any_detail.Unpack(message)
                if kind == "ErrorInfo":
                    out.append({"type": kind, "reason": message.reason, "domain": message.domain,
                                "metadata": dict(message.metadata)})
                elif kind == "RetryInfo":
                    d = message.retry_delay
                    out.append({"type": kind, "retry_delay_ms": d.seconds * 1000 + d.nanos // 1_000_000})
                else:
                    out.append({"type": kind, "violations": [[v.field, v.description]
                                                            for v in message.field_violations]})
    return out


def run(request, pool):
    if request.get("serve") is not None:
        # An inbound case: plain grpcio offers no server side of the SDK's.
        return {"id": request["id"], "skipped": "client-only: no inbound layer in plain grpcio"}
    client, call = request["client"], request["call"]
    outcome = {"id": request["id"], "code": "", "message": "", "responses": [], "details": [],
               "request_id": None, "attempts": None, "elapsed_ms": None, "adapter_error": None}
    path = guess_path(call["service"], call["method"])
    service_name, method_name = path.strip("/").split("/")
    try:
        service = pool.FindServiceByName(service_name)
        method = service.FindMethodByName(method_name)
    except KeyError as e:
        outcome["adapter_error"] = f"{path}: not in the descriptor set ({e})"
        return outcome
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    message = json_format.ParseDict(call.get("request") or {}, request_class())
    md, request_id, token = metadata_of(client, call)
    outcome["request_id"] = request_id
    if token["kind"] in ("error", "refused"):
        # A provider that is down fails the call UNAVAILABLE; one that refuses
        # the credentials, UNAUTHENTICATED (gRFC A54, as grpc-go).
        code = "UNAVAILABLE" if token["kind"] == "error" else "UNAUTHENTICATED"
        outcome.update(code=code, message=token.get("message", ""), attempts=0, elapsed_ms=0)
        return outcome
    timeout_ms = call.get("timeout_ms") or client.get("timeout_ms") or CONTRACT_TIMEOUT_MS
    channel = grpc.insecure_channel(request["endpoint"].removeprefix("http://"))
    started = time.monotonic()
    try:
        if request["kind"] == "server_streaming":
            stub = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response_class.FromString)
            for item in stub(message, timeout=timeout_ms / 1000, metadata=md):
                outcome["responses"].append(json_format.MessageToDict(item))
        else:
            stub = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=response_class.FromString)
            outcome["responses"].append(json_format.MessageToDict(
                stub(message, timeout=timeout_ms / 1000, metadata=md)))
        outcome["code"] = "OK"
    except grpc.RpcError as error:
        outcome["code"] = error.code().name
        outcome["message"] = error.details() or ""
        outcome["details"] = details_of(error)
    finally:
        outcome["elapsed_ms"] = (time.monotonic() - started) * 1000
        channel.close()
    outcome["attempts"] = 1
    return outcome


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--descriptors", required=True)
    pool = load_pool(parser.parse_args().descriptors)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            outcome = run(request, pool)
        except Exception as e:  # a bad request line, a bug here: say so, go on
            outcome = {"id": (request or {}).get("id", "") if isinstance(locals().get("request"), dict) else "",
                       "adapter_error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(outcome) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
