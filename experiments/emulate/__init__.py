"""Emulated sites on one machine: one network namespace per site, a WAN between them with a
chosen one-way delay and bandwidth, real gloo collectives across it, and the simulator's
prediction set beside the measured time (`hdc emulate ...`, `hdc validate ...`).
See docs/emulation.md.

    spec.py            what to build for a topology (names, addresses, per-pair delay/bandwidth),
                       topology overrides and the calibrated model topology
    netns.py           up / down / status: namespaces, TUN or veth links, tbf/htb shaping, state
    delayline.py       the userspace delay line (a long-running process; netem is used instead
                       where the kernel has it)
    netcheck.py        socket checks of a path: UDP RTT, TCP throughput
    launch.py          start one process per rank inside its site's namespace, with its env
    runner.py          timing from a common start instant, the sum check
    executor.py        THE executor (trainer.distributed) and THE simulator for a measurement
    calibrate.py       the probe that measures what the topology cannot know
    worker.py          one rank of `hdc validate`
    validate.py        measured vs predicted vs alpha-beta, CSV and table
    allreduce_bench.py a plain all-reduce timer for `hdc emulate run`
    cli.py             `register(subparsers)`: `emulate up|down|status|run` and `validate`
"""
