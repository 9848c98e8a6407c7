# The sandbox's first process, started by trainer/sandbox.py as `python -I -S init.py CONFIG_JSON`, as root
# in fresh mount, network and IPC namespaces (strong isolation) or as the trainer's user (weak). With a PID
# namespace the process that unshared it stays outside: this script forks, and the child is PID 1 of the new
# namespace (when it exits the kernel kills every process left in it). It mounts a /proc of that namespace,
# starts the program(s) under their uids and limits and writes one JSON line on the status pipe, which no
# program holds. Modes: "program" (main.py; its exit status) and "judged" (worker.py + judge.py; the
# judge's verdict).
import ctypes
import json
import os
import resource
import signal
import sys

ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: same-uid programs (weak mode) cannot open our fds
cfg = json.loads(sys.argv[1])
STATUS = cfg["status_fd"]
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def set_limits(uid):
    lim = cfg["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_time_s"], lim["cpu_time_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["address_space_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["max_file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["strong"]:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"],) * 2)  # per uid: the sandbox's own, when strong


def spawn(uid, script, fds):
    """Fork a program: `fds` (in this process) become 3, 4, ... in it; nothing else is inherited."""
    pid = os.fork()
    if pid:
        return pid
    try:
        for i, fd in enumerate(fds):  # move out of the way first, then into place
            os.dup2(fd, 100 + i)
        for i in range(len(fds)):
            os.dup2(100 + i, 3 + i, inheritable=True)
        os.closerange(3 + len(fds), 65536)
        set_limits(uid)
        os.chdir(cfg["workdir"])
        argv = [cfg["python"], "-I", "-S", os.path.join(cfg["rundir"], script)]
        argv += [os.path.join(cfg["rundir"], f) for f in cfg["inputs"][script]] + [str(3 + i) for i in range(len(fds))]
        os.execve(cfg["python"], argv, cfg["env"])
    finally:
        os._exit(127)


def status_of(wait_status):
    if os.WIFSIGNALED(wait_status):
        return {"signal": os.WTERMSIG(wait_status)}
    return {"exit": os.WEXITSTATUS(wait_status)}


def wait_for(pid):
    """Reap children (PID 1 inherits orphans) until `pid` has ended; its status."""
    while True:
        done, st = os.waitpid(-1, 0)
        if done == pid:
            return status_of(st)


def report(obj):
    os.write(STATUS, (json.dumps(obj) + "\n").encode())


def deadline():
    """End this process (and with PID 1, the namespace) after the run's wall-clock limit, even if the
    trainer that would have killed the sandbox was itself killed."""
    signal.signal(signal.SIGALRM, lambda *_: os._exit(124))
    signal.alarm(int(cfg["limits"]["wall_time_s"]) + 2)


def main():
    deadline()  # alarms are not inherited across fork: PID 1 sets its own
    if cfg["strong"]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            report({"error": f"mount /proc: errno {ctypes.get_errno()}"})
            os._exit(1)
    if cfg["mode"] == "program":
        pid = spawn(cfg["uid_program"], "main.py", [])
        report(wait_for(pid))
        return
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    worker = spawn(cfg["uid_program"], "worker.py", [req_r, resp_w])
    judge = spawn(cfg["uid_judge"], "judge.py", [req_w, resp_r, verdict_w])
    for fd in (req_r, req_w, resp_r, resp_w, verdict_w):
        os.close(fd)
    judged = wait_for(judge)
    verdict = os.read(verdict_r, 4096).decode("utf-8", "replace")
    try:
        os.kill(worker, signal.SIGKILL)  # PID 1's exit would kill it too; without a PID namespace, this does
    except ProcessLookupError:
        pass
    report({"verdict": verdict, "judge": judged})


if cfg["strong"]:  # the unsharing process stays outside the new PID namespace: its first child is PID 1
    deadline()
    child = os.fork()
    if child == 0:
        main()
        os._exit(0)
    os.waitpid(child, 0)
else:
    main()
