# The completion's side of a judged run (uid A): run solution.py as module `solution`, then answer the
# judge's requests on two pipes until it hangs up. Values cross as plain data (None, bool, int, float, str,
# bytes, list, tuple, set, frozenset, dict, by exact type); anything else stays here and crosses as a
# handle ({"ref": n}), so the judge never holds an object of the completion's classes: a custom __eq__
# cannot answer the tests' comparisons. Nothing this process says can make a failing test pass.
import base64
import json
import os
import sys
import types

REQ, RESP = int(sys.argv[2]), int(sys.argv[3])
refs = {}


def encode(v, depth=0):
    t = type(v)
    if depth > 50:
        raise ValueError("value nested too deeply")
    if v is None or t in (bool, int, float, str):
        return v
    if t is bytes:
        return {"bytes": base64.b64encode(v).decode()}
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    refs[id(v)] = v
    return {"ref": id(v)}


def decode(v):
    if not isinstance(v, dict):
        return v
    (kind, x), = v.items()
    if kind == "ref":
        return refs[x]
    if kind == "bytes":
        return base64.b64decode(x)
    if kind == "dict":
        return {decode(k): decode(y) for k, y in x}
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](decode(y) for y in x)


def read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def send(obj):
    data = json.dumps(obj).encode()
    os.write(RESP, len(data).to_bytes(4, "big") + data)


module = types.ModuleType("solution")
sys.modules["solution"] = module
refs[0] = module
source = open(sys.argv[1], encoding="utf-8").read()
exec(compile(source, "solution.py", "exec"), module.__dict__)
while True:
    head = read_exact(REQ, 4)
    if head is None:
        break
    req = json.loads(read_exact(REQ, int.from_bytes(head, "big")))
    try:
        if req["op"] == "names":
            out = {"value": [n for n in list(module.__dict__) if not n.startswith("__")]}
        elif req["op"] == "get":
            out = {"value": encode(getattr(decode(req["ref"]), req["name"]))}
        else:  # call
            out = {"value": encode(decode(req["ref"])(*decode(req["args"]), **decode(req["kwargs"])))}
    except Exception as e:
        out = {"raise": type(e).__name__, "message": str(e)[:1000]}
    send(out)
