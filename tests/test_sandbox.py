"""The code-execution reward contains hostile programs and cannot be gamed: each hostile or
reward-hacking completion gets the failure reward while the correct one gets 1.0, and the
trainer's process, files, network, IPC and environment are untouched."""
import logging
import os
import re
import subprocess
import sys
import time

import pytest

import trainer.sandbox as sandbox
from hdc.errors import UserError
from trainer.code_reward import code, extract_code
from trainer.sandbox import SandboxLimits, run_judged, run_python, strong_isolation_problem

FAST = SandboxLimits(cpu_time_s=2, wall_time_s=4)
STRONG = strong_isolation_problem() is None
needs_strong = pytest.mark.skipif(not STRONG, reason=f"strong isolation: {strong_isolation_problem()}")

HOSTILE = {
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "infinite loop": "while True:\n    pass",
    "10 GB allocation": "x = bytearray(10 * 1024**3)",
    "write outside": "open({marker!r}, 'w').write('pwned')",
    "socket connect": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "read parent env": "import os\nprint(open('/proc/%d/environ' % os.getppid()).read())\nassert 'HDC_SECRET' in os.environ",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\nassert False",
    "huge output": "print('x' * 10**8)\nassert False",
    "huge file": "open('big', 'wb').write(b'x' * 200 * 2**20)",
    "read the tests": "import glob\nprint(open(glob.glob('../tests.py')[0]).read())",
}

# Wrong solutions that an RL policy finds quickly when the tests run inside the program: each must score 0.
CORRECT = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
HACKS = {
    "sys.exit(0) at import": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)",
    "sys.exit(0) in the call": "import sys\ndef add(a, b):\n    sys.exit(0)",
    "os._exit(0) in the call": "import os\ndef add(a, b):\n    os._exit(0)",
    "atexit exit": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    raise SystemExit(0)",
    "== always true": "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()",
    "int subclass with ==": "class Int(int):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Int(0)",
    "list holding a liar": "class Any:\n    __eq__ = lambda s, o: True\ndef add(a, b):\n    return [Any()]",
    "patched AssertionError": "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\n"
                              "def add(a, b):\n    return 0",
    "kill the judge": "import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
                      "            os.kill(int(p), signal.SIGKILL)\n        except OSError:\n            pass\n"
                      "def add(a, b):\n    return 0",
}


@pytest.fixture
def listener():
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    yield srv.getsockname()[1]
    srv.close()


def test_good_program_passes():
    r = run_python("print(sum(range(10)))", FAST, isolation="weak")
    assert r.ok and r.stdout == "45\n"


@needs_strong
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_are_contained(name, tmp_path, listener, monkeypatch):
    monkeypatch.setenv("HDC_SECRET", "hunter2")
    marker = str(tmp_path / "pwned")
    src = HOSTILE[name].format(marker=marker, port=listener)
    t0 = time.monotonic()
    rewards = code(["p"], [f"```python\n{src}\n```"], tests=["assert True"], cpu_time_s=2, wall_time_s=4)
    assert rewards == [0.0], name
    assert time.monotonic() - t0 < 15
    assert not os.path.exists(marker)
    assert os.environ["HDC_SECRET"] == "hunter2"  # we are alive and untouched


@pytest.mark.parametrize("name", sorted(HACKS))
def test_reward_hacks_score_zero_and_the_correct_solution_one(name):
    completions = [f"```python\n{CORRECT}```", f"```python\n{HACKS[name]}\n```"]
    assert code(["p"] * 2, completions, tests=[TESTS] * 2, wall_time_s=6, sandbox="weak") == [1.0, 0.0], name


def test_tests_reach_functions_classes_and_the_solution_module():
    solution = "class Solution:\n    def twice(self, xs):\n        return [2 * x for x in xs]\nLIMIT = 3\n"
    tests = ("assert Solution().twice([1, 2]) == [2, 4]\nassert LIMIT == 3\n"
             "from solution import Solution as S\nassert S().twice((5,)) == [10]\n")
    assert run_judged(solution, tests, FAST, isolation="weak").ok
    wrong = run_judged(solution, "assert Solution().twice([1]) == [3]", FAST, isolation="weak")
    assert not wrong.ok and "AssertionError" in wrong.reason


def test_output_is_capped():
    r = run_python("print('y' * 10**7)", SandboxLimits(max_output_bytes=1000), isolation="weak")
    assert len(r.stdout) < 1100 and "bytes dropped" in r.stdout


@needs_strong
def test_isolation_mode_is_reported():
    assert run_python("pass").isolation == "namespaces+cgroup"


@needs_strong
def test_memory_is_limited_for_the_whole_sandbox():
    # six processes of 300 MB each: 1.8 GB if the limit were per process; under 512 MB for the sandbox at most one
    # holds its memory at a time (the cgroup's OOM killer ends the others)
    src = ("import os, time\npids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
           "        b = b'x' * (300 * 2**20)\n        time.sleep(2)\n        os._exit(0)\n    pids.append(pid)\n"
           "print(sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids))\n")
    r = run_python(src, SandboxLimits(wall_time_s=20, memory_bytes=512 * 2**20))
    assert r.ok, r
    assert int(r.stdout) <= 1, r.stdout


@needs_strong
def test_disk_use_is_capped():
    # files of 8 MB each (under the per-file limit) until the working folder's quota is full
    src = ("written = 0\ntry:\n    for i in range(40):\n        open(f'f{i}', 'wb').write(b'x' * 8 * 2**20)\n"
           "        written += 8\nexcept OSError as e:\n    print(e.errno)\nprint(written)\n")
    r = run_python(src, SandboxLimits(max_disk_bytes=64 * 2**20, memory_bytes=1024 * 2**20))
    lines = r.stdout.split()
    assert r.ok and lines[0] == "28", r  # ENOSPC
    assert int(lines[1]) <= 64


@needs_strong
def test_process_count_is_capped_for_the_whole_sandbox():
    src = ("import os, time\nn = 0\ntry:\n    for _ in range(100):\n        if os.fork() == 0:\n"
           "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n")
    r = run_python(src, SandboxLimits(max_processes=16, wall_time_s=10))
    assert r.ok and int(r.stdout) < 16, r


@needs_strong
def test_sysv_shared_memory_does_not_outlive_the_run():
    key = 0x4D320000 + os.getpid() % 65536
    src = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           f"print(libc.shmget({key}, 1 << 20, 0o1000 | 0o666))\n")  # IPC_CREAT, never removed
    r = run_python(src, FAST)
    assert r.ok and int(r.stdout) >= 0, r
    keys = [int(line.split()[0]) for line in open("/proc/sysvipc/shm").read().splitlines()[1:]]
    assert key not in keys, "the segment lived in the sandbox's own IPC namespace, gone with it"


@needs_strong
def test_proc_shows_only_the_sandbox():
    marker = f"hdc-marker-{os.getpid()}"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        src = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
               "lines = [open(f'/proc/{p}/cmdline').read() for p in pids]\n"
               "print(len(pids), any('hdc-marker' in c for c in lines))\n")
        r = run_python(src, FAST)
    finally:
        other.kill()
        other.wait()
    count, seen = r.stdout.split()
    assert r.ok and int(count) <= 3 and seen == "False", r  # init (PID 1), the program, nothing else


def test_without_strong_isolation_it_refuses_unless_weak(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "strong_isolation_problem", lambda: "needs root on Linux")
    sandbox._warn_weak.cache_clear()
    with pytest.raises(UserError, match=r"code_sandbox: strong sandbox isolation is not available.*code_sandbox: weak"):
        code(["p"], [CORRECT], tests=[TESTS])
    with caplog.at_level(logging.WARNING, logger="hdc.sandbox"):
        assert code(["p"] * 2, [CORRECT, HACKS["== always true"]], tests=[TESTS] * 2, sandbox="weak") == [1.0, 0.0]
    assert any("code_sandbox: weak" in r.message for r in caplog.records)
    r = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])", FAST, isolation="weak")
    assert r.isolation == "rlimits-only"
    assert int(r.stdout) * sandbox.WEAK_MAX_PROCESSES <= FAST.memory_bytes, "the documented total bound"


def test_reward_contract_and_parallel_rows():
    completions = ["<think>x</think><answer>def add(a, b):\n    return a + b</answer>",
                   "```python\ndef add(a, b):\n    return a - b\n```",
                   [{"role": "assistant", "content": "```py\ndef add(a, b): return b + a\n```"}],
                   "no tests for this row"]
    tests = ["assert add(2, 3) == 5"] * 3 + [None]
    assert code(["p"] * 4, completions, tests=tests, sandbox="weak") == [1.0, 0.0, 1.0, None]
    assert code(["p"], ["x"]) == [None]  # no tests column: not applicable
    assert extract_code("a\n```python\nfirst\n```\n```python\nsecond\n```") == "second\n"


def test_code_is_a_builtin_reward_name():
    from trainer.rewards import resolve_reward
    assert resolve_reward("code")(["p"], ["```python\ndef f(): return 1\n```"], tests=["assert f() == 1"],
                                  sandbox="weak") == [1.0]


def test_a_recipe_asks_for_code_sandbox_weak_by_name():
    from trainer.config import Recipe
    from hdc.config import from_dict

    fields = {"model": {"name_or_path": "m"}, "data": {"train_file": "t.jsonl"}, "rewards": [{"func": "code"}]}
    assert from_dict(Recipe, fields).code_sandbox == "strong"
    assert from_dict(Recipe, {**fields, "code_sandbox": "weak"}).code_sandbox == "weak"
    with pytest.raises(UserError, match=re.escape("code_sandbox")):
        from_dict(Recipe, {**fields, "code_sandbox": "none"})


def test_the_recipes_code_sandbox_reaches_the_code_reward():
    from hdc.config import from_dict
    from trainer.config import Recipe
    from trainer.run import reward_params

    recipe = from_dict(Recipe, {"model": {"name_or_path": "m"}, "data": {"train_file": "t.jsonl"}, "code_sandbox": "weak",
                                "rewards": [{"func": "code", "params": {"memory_mb": 256}}, {"func": "format"}]})
    assert reward_params(recipe, recipe.rewards[0]) == {"sandbox": "weak", "memory_mb": 256}
    assert reward_params(recipe, recipe.rewards[1]) == {}


def _sandbox_processes() -> int:
    """Processes running as one of the sandbox's uids."""
    first, last = sandbox.SANDBOX_UID_BASE, sandbox.SANDBOX_UID_BASE + 2 * sandbox.SLOTS
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            n += first <= os.stat(f"/proc/{pid}").st_uid < last
        except OSError:
            pass
    return n


@needs_strong
def test_a_sandbox_whose_trainer_was_killed_ends_by_itself():
    job = ("from trainer.sandbox import SandboxLimits, run_judged\n"
           "run_judged('import time\\ntime.sleep(60)', 'assert True', SandboxLimits(wall_time_s=2))\n")
    trainer = subprocess.Popen([sys.executable, "-c", job])
    deadline = time.monotonic() + 30
    while _sandbox_processes() < 2 and time.monotonic() < deadline:  # the program and its judge (not the probe)
        time.sleep(0.05)
    trainer.kill()  # nothing left to kill the sandbox at its wall-clock limit
    trainer.wait()
    assert _sandbox_processes() > 0
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandbox_processes() == 0, "the sandbox's own deadline (wall_time_s + 2 s) ended it"
