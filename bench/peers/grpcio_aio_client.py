"""The peer client of `cargo xtask bench`: Python grpcio's asyncio API calling
GraphService.GetRepository with the same payload as the Rust clients.

Usage: grpcio_aio_client.py <stubs-dir> <port> <concurrency> <duration-ms> <rounds>
Prints one JSON line per measured window: calls, seconds, cpu_seconds (this
process, every thread), errors.
"""

import asyncio
import json
import resource
import sys
import time

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402

from ameide_core_proto.graph.v1 import graph_pb2, graph_pb2_grpc  # noqa: E402


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def window(stub, concurrency, duration):
    state = {"stop": False, "recording": False, "calls": 0, "errors": 0, "error": None}

    async def worker(n):
        while not state["stop"]:
            try:
                await stub.GetRepository(graph_pb2.GetRepositoryRequest(repository_id=f"repo-{n}"))
                if state["recording"]:
                    state["calls"] += 1
            except grpc.aio.AioRpcError as error:
                state["errors"] += 1
                state["error"] = f"{error.code()}: {error.details()}"
            n += concurrency

    tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    await asyncio.sleep(duration / 5)
    state["recording"] = True
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await asyncio.sleep(duration)
    calls, t1, cpu1 = state["calls"], time.perf_counter(), cpu_seconds()
    state["stop"] = True
    await asyncio.gather(*tasks)
    return {"calls": calls, "seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0,
            "errors": state["errors"], "error": state["error"]}


async def main():
    port, concurrency, duration_ms, rounds = (int(a) for a in sys.argv[2:6])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = graph_pb2_grpc.GraphServiceStub(channel)
        await stub.GetRepository(graph_pb2.GetRepositoryRequest(repository_id="warm-up"))
        for _ in range(rounds):
            print(json.dumps(await window(stub, concurrency, duration_ms / 1000)), flush=True)


asyncio.run(main())
