# The tests' side of a judged run (uid B, not dumpable: the completion can neither read its memory and
# files nor write to its pipes). Runs tests.py with the solution's names bound to proxies (values of plain
# data arrive as real builtins; other objects as handles) and writes "pass" on the verdict pipe only when
# every test ran to its end; an exit, a crash or a hang of the completion's process is a failure.
import base64
import builtins
import ctypes
import json
import os
import sys
import types

REQ, RESP, VERDICT = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/PID/fd, mem or ptrace for same-uid code
MAX_MESSAGE_BYTES = 64 * 2**20


class SolutionExited(Exception):
    pass


class Handle:
    """An object that stays in the solution's process: call it, read its attributes; nothing else."""
    __slots__ = ("_ref",)

    def __init__(self, ref):
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        return rpc({"op": "call", "ref": {"ref": self._ref}, "args": encode(list(args)), "kwargs": encode(kwargs)})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return rpc({"op": "get", "ref": {"ref": self._ref}, "name": name})

    def __repr__(self):
        return f"<solution object {self._ref}>"


def encode(v):
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is bytes:
        return {"bytes": base64.b64encode(v).decode()}
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [encode(x) for x in v]}
    if t is dict:
        return {"dict": [[encode(k), encode(x)] for k, x in v.items()]}
    if t is Handle:
        return {"ref": v._ref}
    raise TypeError(f"cannot pass a {t.__name__} to the solution (plain data only)")


def decode(v):
    if not isinstance(v, dict):
        return v
    (kind, x), = v.items()
    if kind == "ref":
        return Handle(x)
    if kind == "bytes":
        return base64.b64decode(x)
    if kind == "dict":
        return {decode(k): decode(y) for k, y in x}
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](decode(y) for y in x)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(RESP, n - len(buf))
        if not chunk:
            raise SolutionExited("the solution's process ended (an exit, a crash or a limit) before the tests did")
        buf += chunk
    return buf


def rpc(req):
    data = json.dumps(req).encode()
    try:
        os.write(REQ, len(data).to_bytes(4, "big") + data)
    except BrokenPipeError:
        raise SolutionExited("the solution's process ended before the tests did") from None
    n = int.from_bytes(read_exact(4), "big")
    if n > MAX_MESSAGE_BYTES:
        raise SolutionExited(f"the solution sent a {n}-byte answer")
    out = json.loads(read_exact(n))
    if "raise" in out:
        kind = getattr(builtins, str(out["raise"]), None)
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            kind = RuntimeError
        raise kind(str(out.get("message", "")))
    return decode(out["value"])


def verdict(text):
    os.write(VERDICT, text.encode()[:2000])


try:
    env = {"__name__": "__main__", "__builtins__": builtins}
    for name in rpc({"op": "names"}):
        env[str(name)] = rpc({"op": "get", "ref": {"ref": 0}, "name": name})
    module = types.ModuleType("solution")  # `from solution import f` in the tests
    module.__getattr__ = lambda name: rpc({"op": "get", "ref": {"ref": 0}, "name": name})
    sys.modules["solution"] = module
    tests = open(sys.argv[1], encoding="utf-8").read()
    exec(compile(tests, "tests.py", "exec"), env)
except BaseException as e:  # SystemExit from the tests too: only running to the end passes
    verdict(f"fail: {type(e).__name__}: {str(e)[:500]}")
    sys.exit(1)
verdict("pass")
