"""Programs that run inside the sandbox (copied into each run's folder, never imported by the trainer):

    init.py    the sandbox's first process (root, in the new namespaces): mounts /proc for the
               new PID namespace, starts the programs under their uids and limits, reports how
               they ended on a pipe only it holds
    worker.py  (uid A) runs the completion's program, then answers calls into it
    judge.py   (uid B) runs the row's tests against proxies of the program's functions and
               writes the verdict on a pipe only it holds
"""
