"""Plain-socket checks of an emulated path: UDP echo RTT and TCP throughput between two sites.

A socket belongs to the namespace it was created in, so one process can hold a server socket
in site b and a client socket in site a (each created inside `in_netns`) and drive both from
threads. Used by the tests, `hdc emulate status --check` and the delay-line benchmark.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time

from experiments.emulate.netns import in_netns
from experiments.emulate.spec import EmulationSpec


def _sock(netns: str, kind: int) -> socket.socket:
    with in_netns(netns):
        return socket.socket(socket.AF_INET, kind)


def udp_rtt_s(spec: EmulationSpec, a: int, b: int, count: int = 20, gap_s: float = 0.01,
              timeout_s: float = 2.0, port: int = 47001, payload_bytes: int = 64) -> list[float]:
    """Round-trip times of `count` UDP echoes from site a to site b (lost ones are skipped)."""
    srv = _sock(spec.sites[b].netns, socket.SOCK_DGRAM)
    cli = _sock(spec.sites[a].netns, socket.SOCK_DGRAM)
    srv.bind((spec.sites[b].addr, port))
    srv.settimeout(0.2)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(65536)
            except socket.timeout:
                continue
            srv.sendto(data, peer)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    cli.settimeout(timeout_s)
    rtts = []
    try:
        for i in range(count):
            msg = i.to_bytes(4, "big") + bytes(payload_bytes - 4)
            t0 = time.perf_counter()
            cli.sendto(msg, (spec.sites[b].addr, port))
            try:
                while True:
                    data, _ = cli.recvfrom(65536)
                    if data[:4] == msg[:4]:
                        break
            except socket.timeout:
                continue
            rtts.append(time.perf_counter() - t0)
            time.sleep(gap_s)
    finally:
        stop.set()
        th.join(timeout=1.0)
        srv.close()
        cli.close()
    return rtts


def tcp_throughput_Bps(spec: EmulationSpec, a: int, b: int, size_bytes: int = 32 << 20,
                       port: int = 47002, timeout_s: float = 60.0, warmup_bytes: int = 0) -> float:
    """Goodput of one TCP stream a -> b: bytes / time from the first send to the receiver's
    acknowledgement of the last byte (one one-way delay of that is the reply, subtracted)."""
    srv = _sock(spec.sites[b].netns, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((spec.sites[b].addr, port))
    srv.listen(1)
    srv.settimeout(timeout_s)
    result = {}

    def sink() -> None:
        conn, _ = srv.accept()
        conn.settimeout(timeout_s)
        with conn:
            for total in (warmup_bytes, size_bytes):
                got = 0
                while got < total:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return
                    got += len(chunk)
                conn.sendall(b"k")
        result["ok"] = True

    th = threading.Thread(target=sink, daemon=True)
    th.start()
    cli = _sock(spec.sites[a].netns, socket.SOCK_STREAM)
    cli.settimeout(timeout_s)
    try:
        cli.connect((spec.sites[b].addr, port))
        buf = bytes(1 << 20)
        elapsed = 0.0
        for total in (warmup_bytes, size_bytes):
            t0 = time.perf_counter()
            sent = 0
            while sent < total:
                n = min(len(buf), total - sent)
                cli.sendall(buf[:n])
                sent += n
            if total and cli.recv(1) != b"k":
                raise RuntimeError("throughput check: receiver closed early")
            elapsed = time.perf_counter() - t0
    finally:
        cli.close()
        th.join(timeout=timeout_s)
        srv.close()
    if not result.get("ok"):
        raise RuntimeError("throughput check: receiver did not get all bytes")
    return size_bytes / max(elapsed - spec.one_way_s[b][a], 1e-9)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
