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
"""

import json
import subprocess
import sys
import time

mode, target, reference = sys.argv[1], sys.argv[2], sys.argv[3]
child = subprocess.Popen([reference], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


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
