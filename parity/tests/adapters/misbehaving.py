"""A misbehaving parity adapter, for the runner's own tests.

Usage: misbehaving.py MODE CASE_ID REFERENCE_ADAPTER
Forwards every request to the Rust reference adapter and its outcomes back,
except that for CASE_ID it misbehaves as MODE says:
  garbage   a line that is not JSON before the outcome
  wrong-id  the outcome with another case's id
  extra     the outcome twice
  exit      exits (status 3) instead of answering
  slow      answers after 30 s
  float     every outcome with attempts and elapsed_ms as floats (all cases)
  linger    answers normally, but keeps running 60 s after its input ends
  skip      (an inbound case) answers "skipped" instead of serving
  elsewhere (an inbound case) names a serve_endpoint off loopback
  silent    (an inbound case) names a serve_endpoint that accepts and never answers
"""

import json
import socket
import subprocess
import sys
import time

mode, target, reference = sys.argv[1], sys.argv[2], sys.argv[3]
child = subprocess.Popen([reference], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
# Listens (the kernel completes the handshakes) and never reads or answers.
mute = socket.socket()
mute.bind(("127.0.0.1", 0))
mute.listen(16)


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    request = json.loads(line)
    child.stdin.write(line)
    child.stdin.flush()
    outcome = child.stdout.readline().rstrip("\n")
    ours = request["id"] == target
    if mode == "float":
        o = json.loads(outcome)
        o["attempts"] = float(o.get("attempts") or 0)
        o["elapsed_ms"] = float(o.get("elapsed_ms") or 0) + 0.25
        outcome = json.dumps(o)
    if ours and mode == "garbage":
        emit("this is not JSON")
    if ours and mode == "wrong-id":
        o = json.loads(outcome)
        o["id"] = "some-other-case"
        outcome = json.dumps(o)
    if ours and mode == "skip":
        outcome = json.dumps({"id": request["id"], "skipped": "no server side"})
    if ours and mode in ("elsewhere", "silent"):
        o = json.loads(outcome)
        port = mute.getsockname()[1]
        o["serve_endpoint"] = "http://192.0.2.1:80" if mode == "elsewhere" else f"http://127.0.0.1:{port}"
        outcome = json.dumps(o)
    if ours and mode == "exit":
        sys.exit(3)
    if ours and mode == "slow":
        time.sleep(30)
    emit(outcome)
    if ours and mode == "extra":
        emit(outcome)

child.stdin.close()
child.wait()
if mode == "linger":
    time.sleep(60)
