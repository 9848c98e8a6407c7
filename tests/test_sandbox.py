"""The code-execution reward contains hostile programs: each gets the failure reward, with a
reason, and the trainer's process, files, network and environment are untouched."""
import os
import time

import pytest

from trainer.code_reward import code, extract_code
from trainer.sandbox import SandboxLimits, namespaces_available, run_python

FAST = SandboxLimits(cpu_time_s=2, wall_time_s=4)

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
    r = run_python("print(sum(range(10)))", FAST)
    assert r.ok and r.stdout == "45\n"


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


def test_output_is_capped():
    r = run_python("print('y' * 10**7)", SandboxLimits(max_output_bytes=1000))
    assert len(r.stdout) < 1100 and "bytes dropped" in r.stdout


@pytest.mark.skipif(not namespaces_available(), reason="needs root for namespaces")
def test_isolation_mode_is_reported():
    assert run_python("pass").isolation == "namespaces+uid"


def test_reward_contract_and_parallel_rows():
    completions = ["<think>x</think><answer>def add(a, b):\n    return a + b</answer>",
                   "```python\ndef add(a, b):\n    return a - b\n```",
                   [{"role": "assistant", "content": "```py\ndef add(a, b): return b + a\n```"}],
                   "no tests for this row"]
    tests = ["assert add(2, 3) == 5"] * 3 + [None]
    assert code(["p"] * 4, completions, tests=tests) == [1.0, 0.0, 1.0, None]
    assert code(["p"], ["x"]) == [None]  # no tests column: not applicable
    assert extract_code("a\n```python\nfirst\n```\n```python\nsecond\n```") == "second\n"


def test_code_is_a_builtin_reward_name():
    from trainer.rewards import resolve_reward
    assert resolve_reward("code")(["p"], ["```python\ndef f(): return 1\n```"], tests=["assert f() == 1"]) == [1.0]
