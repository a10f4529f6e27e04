#!/usr/bin/env python3
"""Helpers for scripts/bench-ingest. Python 3 standard library only.

Subcommands:
  freeport                    print a free TCP port on 127.0.0.1
  publish  --port P --n N ... publish N readings flat out over raw MQTT 3.1.1
                              (QoS 0 or pipelined QoS 1); prints one JSON object
  watch    --log F --n N ...  follow vigil's stderr, sum `batch committed ...
                              count=` until N; prints one JSON object
  cpu      PID...             per-thread CPU ticks snapshot (JSON) from /proc
  cpudiff  BEFORE AFTER       print per-thread CPU seconds between two snapshots
  cpusecs  BEFORE AFTER PID   CPU seconds of one process between two snapshots
  pubcpu   PUB_JSON           one line on the publisher's own CPU use
  rusage   OUT -- CMD...      run CMD, write its exit time, CPU time and peak RSS to OUT
  hwm      PID                peak RSS (VmHWM) of a process, in KiB
  table    RESULTS            print the results table (JSON lines file)
"""

import argparse
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from datetime import datetime


# --------------------------------------------------------------------------
# MQTT 3.1.1 encoding (only what a publisher needs)

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id, keepalive=0):
    var = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)  # clean session
    body = var + utf8(client_id)
    return b"\x10" + varint(len(body)) + body


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def mqtt_connect(port, client_id):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.sendall(connect_packet(client_id))
    ack = recv_exact(sock, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {ack.hex()}")
    return sock


def readings(n, devices, t0_ms=1700000000000):
    """(topic, payload) for reading i: device i % devices, ts strictly increasing per device."""
    topics = [f"plant/line1/pump-{k}/temperature" for k in range(devices)]
    for i in range(n):
        k = i % devices
        value = 20.0 + (i * 7919 % 1000) / 10.0
        yield topics[k], b'{"value": %.1f, "ts": %d}' % (value, t0_ms + (i // devices) * 100)


def encode_qos0(n, devices):
    heads = {}
    out = bytearray()
    for topic, payload in readings(n, devices):
        t = heads.get(topic)
        if t is None:
            t = heads[topic] = utf8(topic)
        out += b"\x30" + varint(len(t) + len(payload)) + t + payload
    return bytes(out)


def encode_qos1(n, devices):
    """List of (packet bytes without packet id, offset where the 2-byte id goes)."""
    heads = {}
    out = []
    for topic, payload in readings(n, devices):
        t = heads.get(topic)
        if t is None:
            t = heads[topic] = utf8(topic)
        head = b"\x32" + varint(len(t) + 2 + len(payload)) + t
        out.append((head, payload))
    return out


def cmd_publish(a):
    # Encode everything up front so that only sending is timed.
    if a.qos == 0:
        data = encode_qos0(a.n, a.devices)
    else:
        pkts = encode_qos1(a.n, a.devices)
    sock = mqtt_connect(a.port, a.client_id)
    if a.snapshot:
        with open(a.snapshot, "w") as f:
            json.dump(snapshot(a.snapshot_pids), f)
    cpu = os.times()
    cpu0 = cpu.user + cpu.system
    if a.qos == 0:
        view = memoryview(data)
        chunk = 256 * 1024
        t_start = time.time()
        for off in range(0, len(view), chunk):
            sock.sendall(view[off:off + chunk])
        t_sent = time.time()
        # The broker handles one connection's packets in order: once PINGRESP is
        # back, every publish has been read and routed to the subscribers' queues.
        sock.sendall(b"\xc0\x00")
        resp = recv_exact(sock, 2)
        if resp != b"\xd0\x00":
            raise ConnectionError(f"expected PINGRESP, got {resp.hex()}")
        t_done = time.time()
        nbytes = len(data)
    else:
        # Pipelined QoS 1: at most `window` publishes unacknowledged (window < 65535
        # so packet ids are never reused while in flight). A reader thread counts PUBACKs.
        window = min(a.window, 60000)
        acked = [0]
        cond = threading.Condition()
        err = []

        def reader():
            buf = b""
            try:
                while acked[0] < a.n:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise ConnectionError("broker closed the connection")
                    buf += chunk
                    full = len(buf) // 4
                    # Only PUBACKs (0x40 0x02 id id) come back on this connection.
                    if full:
                        if buf[0] != 0x40:
                            raise ConnectionError(f"unexpected packet {buf[:4].hex()}")
                        buf = buf[full * 4:]
                        with cond:
                            acked[0] += full
                            cond.notify()
            except Exception as e:  # noqa: BLE001
                err.append(e)
                with cond:
                    cond.notify()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        sent = 0
        nbytes = 0
        batch = 512
        t_start = time.time()
        while sent < a.n:
            with cond:
                while sent - acked[0] >= window and not err:
                    cond.wait()
            if err:
                raise err[0]
            m = min(batch, a.n - sent, window - (sent - acked[0]))
            out = bytearray()
            for i in range(sent, sent + m):
                head, payload = pkts[i]
                out += head + struct.pack("!H", (i % 65535) + 1) + payload
            sock.sendall(out)
            nbytes += len(out)
            sent += m
        t_sent = time.time()
        with cond:
            while acked[0] < a.n and not err:
                cond.wait()
        if err:
            raise err[0]
        t_done = time.time()
    cpu = os.times()
    cpu_seconds = cpu.user + cpu.system - cpu0
    try:
        sock.sendall(b"\xe0\x00")
        sock.close()
    except OSError:
        pass
    json.dump({"n": a.n, "qos": a.qos, "bytes": nbytes, "t_start": t_start, "t_sent": t_sent, "t_done": t_done,
               "pub_seconds": t_done - t_start, "pub_rate": a.n / max(t_done - t_start, 1e-9),
               "cpu_seconds": cpu_seconds}, sys.stdout)
    print()


# --------------------------------------------------------------------------
# Following vigil's log

COMMIT = re.compile(r"^(\S+)\s+DEBUG\s.*batch committed first_seq=(\d+) count=(\d+)")


def parse_ts(s):
    # tracing-subscriber's default timer: 2025-01-01T00:00:00.123456Z
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def cmd_watch(a):
    """Follow the log until N readings are committed, or until `idle` seconds
    without a commit once the publisher is done (its result file exists), or `timeout`."""
    stored = 0
    commits = 0
    t_first = t_last = t_reached = None
    started = time.time()
    last_progress = time.time()
    pos = 0
    partial = b""
    while True:
        with open(a.log, "rb") as f:
            f.seek(pos)
            data = f.read()
            pos += len(data)
        if data:
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            for raw in lines:
                m = COMMIT.match(raw.decode("utf-8", "replace"))
                if not m:
                    continue
                ts = parse_ts(m.group(1))
                stored += int(m.group(3))
                commits += 1
                t_first = t_first or ts
                t_last = ts
                last_progress = time.time()
                if t_reached is None and stored >= a.n:
                    t_reached = ts
        if stored >= a.n:
            break
        now = time.time()
        if now - started > a.timeout:
            break
        if a.publisher_done and os.path.exists(a.publisher_done) and os.path.getsize(a.publisher_done) > 0 \
                and now - last_progress > a.idle:
            break
        time.sleep(0.005)
    json.dump({"stored": stored, "commits": commits, "t_first_commit": t_first, "t_last_commit": t_last,
               "t_reached": t_reached, "complete": stored >= a.n}, sys.stdout)
    print()


# --------------------------------------------------------------------------
# /proc sampling

TICK = os.sysconf("SC_CLK_TCK")


def thread_ticks(pid):
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except FileNotFoundError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        out[tid] = {"name": name, "ticks": int(fields[11]) + int(fields[12])}
    return out


def machine_ticks():
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # guest time is already counted in user
    return total - idle, total


def proc_ticks(pid):
    """utime + stime of a whole process (including threads that have exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except FileNotFoundError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def snapshot(pids):
    busy, total = machine_ticks()
    return {"t": time.time(), "machine": [busy, total], "procs": {pid: thread_ticks(pid) for pid in pids},
            "totals": {pid: proc_ticks(pid) for pid in pids}}


def cmd_cpu(a):
    json.dump(snapshot(a.pids), sys.stdout)
    print()


def cmd_cpudiff(a):
    with open(a.before) as f:
        before = json.load(f)
    with open(a.after) as f:
        after = json.load(f)
    # Utilisation over the measured phase (first publish -> done) when given: the
    # snapshots also span the publisher's start-up, during which everything is idle.
    wall = a.wall if a.wall else after["t"] - before["t"]
    busy = after["machine"][0] - before["machine"][0]
    total = after["machine"][1] - before["machine"][1]
    ncpu = os.cpu_count() or 1
    print(f"    machine: {100 * busy / max(total, 1):.0f}% of {ncpu} CPUs busy (all processes, "
          f"{after['t'] - before['t']:.2f} s from the first publish to the end snapshot)")
    for extra in a.extra:
        print(f"    {extra}")
    for pid, threads in after["procs"].items():
        label = a.label.get(pid, pid) if a.label else pid
        old = before["procs"].get(pid, {})
        rows = []
        for tid, th in threads.items():
            d = th["ticks"] - old.get(tid, {"ticks": 0})["ticks"]
            rows.append((d / TICK, tid, th["name"]))
        total = sum(r[0] for r in rows)
        busy = [r for r in sorted(rows, reverse=True) if r[0] > 0]
        print(f"    {label} (pid {pid}): {total:.2f} CPU-s in {wall:.2f} s = {100 * total / max(wall, 1e-9):.0f}% of one core")
        for secs, tid, name in busy[:8]:
            print(f"      {name:<22} tid {tid:<8} {secs:6.2f} s  {100 * secs / max(wall, 1e-9):4.0f}%")


def cmd_cpusecs(a):
    with open(a.before) as f:
        before = json.load(f)
    with open(a.after) as f:
        after = json.load(f)
    print(f"{(after['totals'][a.pid] - before['totals'][a.pid]) / TICK:.3f}")


def cmd_pubcpu(a):
    with open(a.pub) as f:
        d = json.load(f)
    print(f"publisher (python, QoS {d['qos']}): {d['cpu_seconds']:.2f} CPU-s in its {d['pub_seconds']:.2f} s "
          f"= {100 * d['cpu_seconds'] / max(d['pub_seconds'], 1e-9):.0f}% of one core")


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cmd_hwm(a):
    print(hwm_kib(a.pid))


def cmd_rusage(a):
    """Run a command (inheriting stdio), then write its exit time, status, CPU and peak RSS as JSON."""
    import signal
    import subprocess
    child = subprocess.Popen(a.command)
    # Pass on the cleanup trap's SIGTERM (and ^C) so the child does not outlive us.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    _, status, ru = os.wait4(child.pid, 0)
    t_exit = time.time()
    with open(a.out, "w") as f:
        json.dump({"t_exit": t_exit, "rc": os.waitstatus_to_exitcode(status), "cpu_seconds": ru.ru_utime + ru.ru_stime,
                   "maxrss_kib": ru.ru_maxrss}, f)
    sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)


# --------------------------------------------------------------------------
# Report

def cmd_table(a):
    rows = []
    with open(a.results) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    by_id = {r["id"]: r for r in rows}
    head = ("phase", "readings", "seconds", "readings/s", "vs mosquitto_sub", "peak RSS MiB", "consumer CPU us/msg", "publisher msgs/s")
    table = [head]
    for r in rows:
        base = by_id.get(r.get("baseline"))
        ratio = "-"
        if base and base.get("rate") and r.get("rate"):
            ratio = f"{r['rate'] / base['rate']:.2f}x ({base['id']})"
        readings = f"{r['count']}/{r['n']}"
        if r["count"] != r["n"]:
            readings += " !"
        rss = f"{r['rss_kib'] / 1024:.1f}" if r.get("rss_kib") else "-"
        table.append((
            f"{r['id']} {r['label']}",
            readings,
            f"{r['seconds']:.2f}" if r.get("seconds") is not None else "-",
            f"{r['rate']:,.0f}" if r.get("rate") else "-",
            ratio,
            rss,
            f"{1e6 * r['cpu_seconds'] / r['count']:.1f}" if r.get("cpu_seconds") and r["count"] else "-",
            f"{r['pub_rate']:,.0f}" if r.get("pub_rate") else "-",
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for j, row in enumerate(table):
        print("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("freeport")

    s = sub.add_parser("publish")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--devices", type=int, default=100)
    s.add_argument("--qos", type=int, choices=(0, 1), default=0)
    s.add_argument("--window", type=int, default=20000, help="QoS 1: publishes in flight")
    s.add_argument("--client-id", default=f"bench-pub-{os.getpid()}")
    s.add_argument("--snapshot", help="write a CPU snapshot (see `cpu`) here just before the first publish")
    s.add_argument("--snapshot-pids", nargs="*", default=[])

    s = sub.add_parser("watch")
    s.add_argument("--log", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--timeout", type=float, default=240)
    s.add_argument("--idle", type=float, default=10)
    s.add_argument("--publisher-done", help="file the publisher's result is written to")

    s = sub.add_parser("cpu")
    s.add_argument("pids", nargs="+")

    s = sub.add_parser("cpudiff")
    s.add_argument("before")
    s.add_argument("after")
    s.add_argument("--label", nargs="*", type=lambda kv: kv.split("=", 1), default=[])
    s.add_argument("--wall", type=float, help="seconds to compute utilisation over")
    s.add_argument("--extra", action="append", default=[], help="line to print after the machine line")

    s = sub.add_parser("cpusecs")
    s.add_argument("before")
    s.add_argument("after")
    s.add_argument("pid")

    s = sub.add_parser("pubcpu")
    s.add_argument("pub")

    s = sub.add_parser("rusage")
    s.add_argument("out")
    s.add_argument("command", nargs=argparse.REMAINDER)

    s = sub.add_parser("hwm")
    s.add_argument("pid")

    s = sub.add_parser("table")
    s.add_argument("results")

    a = p.parse_args()
    if a.cmd == "freeport":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1])
    elif a.cmd == "publish":
        cmd_publish(a)
    elif a.cmd == "watch":
        cmd_watch(a)
    elif a.cmd == "cpu":
        cmd_cpu(a)
    elif a.cmd == "cpudiff":
        a.label = dict(a.label)
        cmd_cpudiff(a)
    elif a.cmd == "cpusecs":
        cmd_cpusecs(a)
    elif a.cmd == "pubcpu":
        cmd_pubcpu(a)
    elif a.cmd == "rusage":
        if a.command[:1] == ["--"]:
            a.command = a.command[1:]
        cmd_rusage(a)
    elif a.cmd == "hwm":
        cmd_hwm(a)
    elif a.cmd == "table":
        cmd_table(a)


if __name__ == "__main__":
    main()
