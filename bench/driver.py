#!/usr/bin/env python3
"""Herald benchmark driver (stdlib only). `bench/run` calls it; see docs/benchmarks.md.

Sub-commands (each writes OUT_DIR/<name>.json and prints one line per run):
  probe    start Herald on a scratch data dir and check that ingest answers 202
  e2e      ingest N events in batches as fast as possible; time until nginx has seen all
           (with --database-url: on PostgreSQL, on --nodes nodes sharing a fresh schema)
  latency  ingest at a steady rate; arrival at nginx minus the 202 seen by the client
  ingest   single events from wrk (64 connections, token auth): accepted/s, and delivered/s
           over the same window
  recovery  events accepted while nginx is stopped, Herald killed with SIGKILL, nginx resumed,
           Herald restarted on the same data dir: time until all have arrived, duplicates, order
  ceiling  the `ceiling` example: Herald's HTTP legs with no store, b's send leg alone and
           e's load relayed, to read b and e against what this machine allows
  memory   ingest N events towards a down endpoint; Herald's VmRSS once the queue settles,
           and the delivery log's first page with that history stored
  idle     10 endpoints that never answer hold all their slots; Herald's CPU meanwhile
  retention  a steady load with a short HERALD_RETENTION; the data dir's size over time
  hooks    a recording source's hooks, as nginx-rtmp sends them (publish, record_done of a real
           file, publish_done) from many streams at once: how long each answer takes
  upload   one large recording stored in a local Garage through a source with storage, beside
           `rclone copyto` of the same file: MB/s of each, and Herald's RSS growth meanwhile
  report   read OUT_DIR/*.json, print the summary table and write OUT_DIR/summary.md

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

import argparse
import http.client
import json
import os
import queue
import resource
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

PROJECT = "b3c4e5f60718293a4b5c6d7e8f901234"
DOMAIN = "bench.example.com"
EVENTS_PATH = f"/v1/{PROJECT}/record/events"
CONFIGS_PATH = f"/v1/{PROJECT}/record/callbacks"


# ---------------------------------------------------------------------------------------
# Herald process


class Herald:
    """One `herald serve` on a fresh data dir, with a token and (optionally) a config."""

    def __init__(self, binary, data_dir, log_path, env_extra=None):
        self.binary, self.data_dir, self.log_path = binary, data_dir, log_path
        os.makedirs(data_dir, exist_ok=True)
        self.argv = [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir,
                     "--allow-private-targets"]
        self._start(self.argv, env_extra)
        self.token = self._token()

    def restart(self):
        """`herald serve` again on the same data dir (its master key and token with it) and
        environment, once the last process has ended; no CLI runs meanwhile."""
        self.stderr.close()
        self._start(self.argv, self.env)

    def _start(self, argv, env_extra=None):
        """Starts `argv`, which prints `listening on http://HOST:PORT` first."""
        env = dict(os.environ)
        env.update(env_extra or {})
        self.env = env
        self.stderr = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        line = self._first_line(timeout=30)
        m = re.match(r"listening on http://([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not print its address (got {line!r}); see {self.log_path}")
        self.host, self.port = m.group(1), int(m.group(2))
        # Keep draining stdout so that the process never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _first_line(self, timeout):
        deadline, buf = time.time() + timeout, b""
        while time.time() < deadline and b"\n" not in buf:
            if self.proc.poll() is not None:
                break
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.split(b"\n")[0].decode(errors="replace")

    def _drain(self):
        try:
            while os.read(self.proc.stdout.fileno(), 65536):
                pass
        except OSError:
            pass

    def _token(self):
        out = subprocess.run(
            [self.binary, "tokens", "create", "--project", PROJECT, "--data-dir", self.data_dir,
             "--json"], check=True, capture_output=True, timeout=30, env=self.env).stdout
        return json.loads(out)["token"]

    def conn(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, conn, method, path, body=None):
        headers = {"X-Auth-Token": self.token}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def create_config(self, url, domain=DOMAIN):
        body = json.dumps({"publish_domain": domain, "app": "*", "notify_callback_url": url,
                           "notify_event_subscription": ["RECORD_FILE_COMPLETE"],
                           "key": "BenchKey0123456789abcdefghijklmn"})
        c = self.conn()
        status, data = self.request(c, "POST", CONFIGS_PATH, body)
        c.close()
        if status != 201:
            raise RuntimeError(f"create config: {status} {data[:300]!r}")

    def metrics(self):
        try:
            c = self.conn(timeout=10)
            c.request("GET", "/metrics")
            r = c.getresponse()
            text = r.read().decode(errors="replace")
            c.close()
            return text if r.status == 200 else ""
        except OSError:
            return ""

    def status(self, field):
        """A field of /proc/PID/status in MiB (VmRSS, VmHWM)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def cpu_s(self):
        """User + system CPU seconds Herald has used so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def log_counts(self):
        """(warnings, errors) lines in Herald's log so far."""
        warn = err = 0
        try:
            with open(self.log_path, "rb") as f:
                for line in f:
                    if b" WARN " in line or b"WARN" in line[:60]:
                        warn += 1
                    if b" ERROR " in line or b"ERROR" in line[:60]:
                        err += 1
        except OSError:
            pass
        return warn, err

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.stderr.close()


class Relay(Herald):
    """`ceiling relay`: Herald's two HTTP legs with no store (i); measured like Herald in e."""

    def __init__(self, binary, url, log_path):
        self.log_path = log_path
        self._start([binary, "relay", url])
        self.token = "ceiling"

    def create_config(self, url, domain=DOMAIN):
        pass  # it sends every event to the URL it was started with


# ---------------------------------------------------------------------------------------
# Events and ingest


def event(event_id, i, streams):
    """A RECORD_FILE_COMPLETE event like seed 001's example; its callback is ~600 bytes."""
    s = f"s{i % streams:04d}"
    obj = f"live/{s}/record-{DOMAIN}-live-{s}-1714557600.mp4"
    return {
        "event_id": event_id, "event_type": "RECORD_FILE_COMPLETE", "publish_domain": DOMAIN,
        "app": "live", "stream": s, "record_format": "MP4",
        "download_url": f"https://obs.example.com/{obj}", "play_url": f"https://play.example.com/{obj}",
        "file_size": 734003200 + i, "record_duration": 1800,
        "start_time": "2024-05-01T10:00:00Z", "end_time": "2024-05-01T10:30:00Z",
        "width": 1920, "height": 1080,
    }


def batch_bodies(prefix, n, batch, streams):
    """Pre-serialised request bodies: (body, [event ids])."""
    out = []
    for start in range(0, n, batch):
        ids = [f"{prefix}-{i:07d}" for i in range(start, min(n, start + batch))]
        evs = [event(eid, start + k, streams) for k, eid in enumerate(ids)]
        body = json.dumps(evs[0] if batch == 1 else {"events": evs}, separators=(",", ":"))
        out.append((body.encode(), ids))
    return out


def ingest_all(heralds, bodies, threads, deadline, on_done=None):
    """POST every body over `threads` keep-alive connections as fast as possible; with
    several nodes, connection k goes to node k mod N. Returns (accepted deliveries,
    [error strings])."""
    work = queue.Queue()
    for b in bodies:
        work.put(b)
    lock, totals, errors = threading.Lock(), {"deliveries": 0}, []

    def worker(herald):
        c = herald.conn()
        while time.time() < deadline:
            try:
                body, ids = work.get_nowait()
            except queue.Empty:
                break
            try:
                status, data = herald.request(c, "POST", EVENTS_PATH, body)
            except (OSError, http.client.HTTPException) as e:
                c.close()
                c = herald.conn()
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                if status == 202:
                    totals["deliveries"] += json.loads(data).get("deliveries", 0)
                else:
                    errors.append(f"{status} {data[:200]!r}")
            if on_done:
                on_done()
        c.close()

    ts = [threading.Thread(target=worker, args=(heralds[k % len(heralds)],)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if time.time() >= deadline and not work.empty():
        errors.append(f"time limit reached with {work.qsize()} requests not sent")
    return totals["deliveries"], errors


# ---------------------------------------------------------------------------------------
# nginx access log: "$msec $status $http_herald_event_id $http_herald_delivery_attempt ..."


class AccessLog:
    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self.rest = b""

    def new_lines(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            parts = line.decode(errors="replace").split(" ")
            if len(parts) >= 4:
                yield float(parts[0]), parts[1], parts[2], parts[3]


def follow_arrivals(log, prefix, expected, stall_s, deadline):
    """Read the access log until `expected` distinct event ids with `prefix` have arrived
    (2xx), nothing new came for `stall_s` seconds, or `deadline`. Returns
    (first arrival per id {id: msec}, stats)."""
    first, stats = {}, {"lines": 0, "duplicates": 0, "retries": 0, "non_2xx": 0}
    last_new = time.time()
    while len(first) < expected and time.time() < deadline:
        got = False
        for msec, status, eid, attempt in log.new_lines():
            if not eid.startswith(prefix):
                continue
            got = True
            stats["lines"] += 1
            if attempt not in ("1", "-"):
                stats["retries"] += 1
            if not status.startswith("2"):
                stats["non_2xx"] += 1
                continue
            if eid in first:
                stats["duplicates"] += 1
            else:
                first[eid] = msec
        if got:
            last_new = time.time()
        elif time.time() - last_new > stall_s:
            stats["stalled"] = True
            break
        else:
            time.sleep(0.05)
    return first, stats


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100.0 * len(s) + 0.5) - 1))]


def postgres_cpu_s():
    """User + system CPU seconds used so far by the PostgreSQL server's processes on this
    machine (the postmaster and every backend), or None where they cannot be read."""
    total, found = 0.0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            if not head.split("(", 1)[1].startswith("postgres"):
                continue
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
        except (OSError, IndexError, ValueError):
            continue
    return total if found else None


def write_bytes(pid):
    """Bytes process `pid` has caused to be written to storage so far (/proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def postgres_write_bytes():
    """Bytes the PostgreSQL server's processes on this machine have written so far."""
    total, found = 0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("postgres"):
                    continue
        except OSError:
            continue
        n = write_bytes(pid)
        if n is not None:
            total, found = total + n, True
    return total if found else None


def cpu_marks(heralds):
    """Marks for `context`: CPU used and bytes written so far by the Herald processes and by
    PostgreSQL, and CPU used by this driver."""
    cpus = [h.cpu_s() for h in heralds]
    written = [write_bytes(h.proc.pid) for h in heralds]
    return {"herald_cpu_s": None if None in cpus else sum(cpus),
            "postgres_cpu_s": postgres_cpu_s(),
            "driver_cpu_s": time.process_time(),
            "herald_write_bytes": None if None in written else sum(written),
            "postgres_write_bytes": postgres_write_bytes()}


def on_postgres(heralds):
    return len(heralds) > 1 or any("HERALD_DATABASE_URL" in h.env for h in heralds)


def context(heralds, marks, callbacks=None):
    """CPU used by Herald, PostgreSQL and this driver since `marks`, and the load average:
    on a shared 2-core machine these tell whether a figure was disturbed. With the number
    of `callbacks` delivered meanwhile, also Herald's CPU and the store's bytes written per
    callback (the store is Herald's data dir, or the PostgreSQL server)."""
    now = cpu_marks(heralds)
    used = lambda k, digits=2: (round(now[k] - marks[k], digits)
                                if now[k] is not None and marks[k] is not None else None)
    out = {
        "herald_cpu_s": used("herald_cpu_s"),
        "driver_cpu_s": used("driver_cpu_s"),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    pg = on_postgres(heralds)
    if pg:
        out["postgres_cpu_s"] = used("postgres_cpu_s")
    store_bytes = used("postgres_write_bytes" if pg else "herald_write_bytes", 0)
    if callbacks:
        cpu = out["herald_cpu_s"]
        out["cpu_us_per_callback"] = round(cpu * 1e6 / callbacks) if cpu is not None else None
        out["bytes_written_per_callback"] = (round(store_bytes / callbacks)
                                             if store_bytes is not None else None)
    return out


def per_second(times, t0):
    """Arrivals in each whole second after t0: shows stalls and slow-downs."""
    counts = {}
    for t in times:
        counts[int(t - t0)] = counts.get(int(t - t0), 0) + 1
    return [counts.get(i, 0) for i in range(max(counts) + 1)] if counts else []


def save(out_dir, name, data):
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)


def save_metrics(herald, out_dir, name):
    with open(os.path.join(out_dir, f"{name}.metrics.txt"), "w") as f:
        f.write(herald.metrics())


# ---------------------------------------------------------------------------------------
# Measurements


def cmd_probe(a):
    h = Herald(a.herald, os.path.join(a.out_dir, "probe-data"), os.path.join(a.out_dir, "probe.log"))
    try:
        c = h.conn(timeout=10)
        status, data = h.request(c, "POST", EVENTS_PATH, json.dumps(event("probe-1", 0, 1)))
        print(f"probe: POST {EVENTS_PATH} -> {status} {data[:200].decode(errors='replace')}")
        return 0 if status == 202 else 1
    finally:
        h.stop()


class Schema:
    """A fresh schema on the PostgreSQL server `base_url` names, for one run; Herald's
    connections use it through `search_path`. The server must be on this machine for its
    CPU to be counted."""

    def __init__(self, base_url, tag):
        self.base_url = base_url
        self.name = "herald_bench_" + re.sub(r"[^a-z0-9]", "", tag.lower())
        self.psql(f"CREATE SCHEMA {self.name}")
        sep = "&" if "?" in base_url else "?"
        self.url = f"{base_url}{sep}options=-c%20search_path%3D{self.name}"

    def psql(self, sql):
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.base_url, "-c", sql],
                       check=True, capture_output=True, timeout=120)

    def drop(self):
        self.psql(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")

    def wal(self):
        """(WAL records, WAL bytes, commits) the server has written so far (PostgreSQL 14+;
        zeros where it cannot tell): the write volume behind each callback."""
        out = subprocess.run(
            ["psql", "-X", "-qAt", "-F", " ", "-d", self.base_url, "-c",
             "SELECT w.wal_records, w.wal_bytes, d.xact_commit FROM pg_stat_wal w, pg_stat_database d "
             "WHERE d.datname = current_database()"],
            capture_output=True, text=True, timeout=60).stdout.split()
        return tuple(int(x) for x in out) if len(out) == 3 else (0, 0, 0)


def start_nodes(a, tag):
    """The Herald processes of one run: one on a fresh data dir (the embedded store), or,
    with --database-url, --nodes of them sharing a fresh schema and one master key."""
    data = lambda k: os.path.join(a.out_dir, f"{tag}-data{k}")
    log = lambda k: os.path.join(a.out_dir, f"{tag}{k}.log")
    if not a.database_url:
        return [Herald(a.herald, data(""), log(""))], None
    schema = Schema(a.database_url, tag)
    env = {"HERALD_DATABASE_URL": schema.url, "HERALD_MASTER_KEY": uuid.uuid4().hex + uuid.uuid4().hex}
    nodes = []
    try:
        for k in range(a.nodes):
            nodes.append(Herald(a.herald, data(k), log(k), env))
    except Exception:
        for n in nodes:
            n.stop()
        schema.drop()
        raise
    return nodes, schema


def cmd_e2e(a):
    runs = []
    for r in range(a.runs):
        tag = f"{a.name}{r}-{uuid.uuid4().hex[:8]}"
        nodes, schema = start_nodes(a, tag)
        try:
            nodes[0].create_config(f"http://127.0.0.1:{a.nginx_port}/cb")
            bodies = batch_bodies(tag, a.events, a.batch, a.streams)
            log = AccessLog(a.access_log)
            deadline = time.time() + a.time_limit
            wal0 = schema.wal() if schema else None
            marks = cpu_marks(nodes)
            t0 = time.time()
            deliveries, errors = ingest_all(nodes, bodies, a.threads, deadline)
            t_ingested = time.time()
            first, stats = follow_arrivals(log, tag, a.events, a.stall, deadline)
            t_last = max(first.values()) if first else t0
            if schema:
                # Counted over the run, so other databases' traffic would show up too.
                wal = [b - a_ for a_, b in zip(wal0, schema.wal())]
                stats["postgres_per_callback"] = {
                    "wal_records": round(wal[0] / max(len(first), 1), 1),
                    "wal_bytes": round(wal[1] / max(len(first), 1)),
                    "commits": round(wal[2] / max(len(first), 1), 3),
                }
            logs = [n.log_counts() for n in nodes]
            res = {
                "events": a.events, "batch": a.batch, "streams": a.streams,
                "store": "postgres" if schema else "embedded", "nodes": len(nodes),
                "ingest_threads": a.threads, "deliveries_accepted": deliveries,
                "ingest_errors": errors[:20], "ingest_error_count": len(errors),
                "ingest_s": round(t_ingested - t0, 3),
                "ingest_events_per_s": round(a.events / max(t_ingested - t0, 1e-9), 1),
                "arrived": len(first), "elapsed_s": round(t_last - t0, 3),
                "callbacks_per_s": round(len(first) / max(t_last - t0, 1e-9), 1),
                "log_warn_error": (sum(w for w, _ in logs), sum(e for _, e in logs)), **stats,
                "arrivals_per_s": per_second(first.values(), t0),
                **context(nodes, marks, len(first)),
            }
            for k, n in enumerate(nodes):
                save_metrics(n, a.out_dir, f"{tag}-node{k}")
        finally:
            for n in nodes:
                n.stop()
            if schema:
                schema.drop()
        print(f"{a.name} run {r + 1}/{a.runs}: {res['arrived']}/{a.events} callbacks in "
              f"{res['elapsed_s']} s = {res['callbacks_per_s']}/s (ingest {res['ingest_s']} s, "
              f"{res['ingest_error_count']} ingest errors, {res['duplicates']} duplicates, "
              f"{res['retries']} retries)", flush=True)
        runs.append(res)
    med = statistics.median(r["callbacks_per_s"] for r in runs)
    save(a.out_dir, a.name, {"runs": runs, "median_callbacks_per_s": med})
    return 0 if all(r["arrived"] == a.events for r in runs) else 1


def cmd_latency(a):
    tag = f"lat-{uuid.uuid4().hex[:8]}"
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"))
    try:
        h.create_config(f"http://127.0.0.1:{a.nginx_port}/cb")
        n = int(a.rate * a.duration)
        bodies = batch_bodies(tag, n, a.batch, a.streams)
        log = AccessLog(a.access_log)
        # Request j (a.batch events) is due at t0 + j * batch / rate, open loop: the `pace`
        # example sends it then, whatever the requests before it are doing, over up to
        # a.connections keep-alive connections (a request waits, and counts as late, only
        # when all of them are busy), and writes down when each was sent and answered.
        sched = os.path.join(a.out_dir, f"{tag}.bodies")
        with open(sched, "wb") as f:
            f.write(b"\n".join(body for body, _ in bodies) + b"\n")
        answers = os.path.join(a.out_dir, f"{tag}.answers")
        marks = cpu_marks([h])
        out = subprocess.run(
            [a.pace, "--url", f"http://{h.host}:{h.port}{EVENTS_PATH}", "--token", h.token,
             "--per-second", str(a.rate / a.batch), "--bodies", sched, "--out", answers,
             "--connections", str(a.connections), "--delay", "0.5"],
            capture_output=True, text=True, timeout=a.duration + 120)
        if out.returncode != 0:
            raise RuntimeError(f"pace failed: {out.stderr.strip()[-500:]}")
        paced = json.loads(out.stdout)
        t0, late = paced["start"], paced["late_requests"]
        acked, sent, errors = {}, {}, []
        with open(answers) as f:
            for line in f:
                j, ts, t202, status = json.loads(line)
                if status == 202:
                    for eid in bodies[j][1]:
                        acked[eid], sent[eid] = t202, ts
                else:
                    errors.append(f"request {j}: status {status}" if status else f"request {j}: no answer")
        # The run ends with the last answer (pace waits for every one).
        t_end = max(acked.values(), default=t0)
        first, stats = follow_arrivals(log, tag, len(acked), a.stall, time.time() + 120)
        lat = [(first[e] - acked[e]) * 1000 for e in acked if e in first]
        # Worst latency per second of the run (by 202 time): shows whether slow ones cluster.
        worst = {}
        for e in acked:
            if e in first:
                sec = int(acked[e] - t0)
                worst[sec] = max(worst.get(sec, -1e9), (first[e] - acked[e]) * 1000)
        ingest = [(acked[e] - sent[e]) * 1000 for e in acked]
        res = {
            "mode": "single events" if a.batch == 1 else f"batches of {a.batch}",
            "target_rate": a.rate, "duration_s": a.duration, "connections": a.connections,
            "streams": a.streams, "events": n, "acked": len(acked), "arrived": len(first),
            "achieved_rate": round(len(acked) / max(t_end - t0, 1e-9), 1),
            "late_requests": late, "ingest_errors": errors[:20], "ingest_error_count": len(errors),
            "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
            "max_ms": max(lat) if lat else None, "min_ms": min(lat) if lat else None,
            "ingest_p50_ms": pct(ingest, 50), "ingest_p99_ms": pct(ingest, 99),
            "log_warn_error": h.log_counts(), **stats,
            "max_ms_per_second": [round(worst.get(i, 0), 1) for i in range(max(worst) + 1)] if worst else [],
            **context([h], marks, len(first)),
        }
        for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "min_ms", "ingest_p50_ms", "ingest_p99_ms"):
            if res[k] is not None:
                res[k] = round(res[k], 2)
        save_metrics(h, a.out_dir, tag)
    finally:
        h.stop()
    print(f"{a.name}: {res['acked']}/{n} acked at {res['achieved_rate']}/s, {res['arrived']} arrived; "
          f"arrival-202 p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms max {res['max_ms']} ms; "
          f"202 p50 {res['ingest_p50_ms']} ms p99 {res['ingest_p99_ms']} ms; "
          f"{res['late_requests']} late requests, {res['ingest_error_count']} errors; "
          f"{res.get('cpu_us_per_callback')} us CPU and {res.get('bytes_written_per_callback')} bytes "
          f"written per callback", flush=True)
    save(a.out_dir, a.name, res)
    return 0 if res["arrived"] == n else 1


INGEST_LUA = """-- Generated by bench/driver.py (ingest): one Live event per request, each with an
-- event id of its own, streams taken in turn; args: prefix, token, streams.
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end
function init(args)
    prefix, streams, n = args[1], tonumber(args[3]), 0
    wrk.method = "POST"
    wrk.headers["X-Auth-Token"] = args[2]
    wrk.headers["Content-Type"] = "application/json"
end
local template = %s
function request()
    n = n + 1
    local id = string.format("%%s-%%d-%%d", prefix, tid, n)
    local stream = string.format("s%%04d", (n * 7 + tid) %% streams)
    local body = template:gsub("@ID@", id):gsub("@S@", stream)
    return wrk.format(nil, "%s", nil, body)
end
"""


def wrk_single_events(a, h, tag):
    """Single events from wrk at `h` (a Herald, or the ceiling's relay) for a.duration, each
    delivered to nginx: accepted/s from wrk's 2xx count, delivered/s from nginx's log over
    the same window, then how long the rest took to arrive."""
    h.create_config(f"http://127.0.0.1:{a.nginx_port}/cb")
    template = json.dumps(event("@ID@", 0, 1) | {"stream": "@S@"}, separators=(",", ":"))
    template = template.replace("live/s0000/", "live/@S@/").replace("-s0000-", "-@S@-")
    script = os.path.join(a.out_dir, f"{tag}.lua")
    with open(script, "w") as f:
        f.write(INGEST_LUA % (json.dumps(template), EVENTS_PATH))
    log = AccessLog(a.access_log)
    marks = cpu_marks([h])
    t0 = time.time()
    out = subprocess.run(
        ["wrk", f"-t{a.wrk_threads}", f"-c{a.connections}", f"-d{a.duration:g}s", "--latency",
         "-s", script, f"http://{h.host}:{h.port}{EVENTS_PATH}", "--", tag, h.token,
         str(a.streams)], capture_output=True, text=True, timeout=a.duration + 120).stdout
    t_end = time.time()
    with open(os.path.join(a.out_dir, f"{tag}.wrk.txt"), "w") as f:
        f.write(out)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    requests = int(m.group(1)) if m else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    accepted = requests - (int(non2xx.group(1)) if non2xx else 0)
    first, stats = follow_arrivals(log, tag, accepted, a.stall, time.time() + 300)
    in_window = sum(1 for t in first.values() if t <= t_end)
    t_last = max(first.values()) if first else t_end
    window = t_end - t0
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return {
        "connections": a.connections, "duration_s": a.duration, "streams": a.streams,
        "requests": requests, "accepted": accepted, "arrived": len(first),
        "accepted_per_s": round(accepted / window, 1),
        "delivered_per_s_in_window": round(in_window / window, 1),
        "delivered_share": round(in_window / max(accepted, 1), 3),
        "drain_after_s": round(max(0.0, t_last - t_end), 2),
        "ingest_p50": p50.group(1) if p50 else None, "ingest_p99": p99.group(1) if p99 else None,
        "log_warn_error": h.log_counts(), **stats,
        "arrivals_per_s": per_second(first.values(), t0),
        **context([h], marks, len(first)),
    }


def ingest_line(label, res):
    return (f"{label}: {res['accepted']} single events accepted in {res['duration_s']:g} s = "
            f"{res['accepted_per_s']:,.0f}/s (202 p50 {res['ingest_p50']}, p99 {res['ingest_p99']}); "
            f"delivered meanwhile {res['delivered_per_s_in_window']:,.0f}/s, the rest within "
            f"{res['drain_after_s']} s ({res['arrived']} arrived); {res.get('cpu_us_per_callback')} us CPU "
            f"per callback")


def cmd_ingest(a):
    """e. Single events as recording engines send them: wrk, one event per request, every
    accepted event delivered to nginx."""
    tag = f"ing-{uuid.uuid4().hex[:8]}"
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"))
    try:
        res = wrk_single_events(a, h, tag)
        save_metrics(h, a.out_dir, tag)
    finally:
        h.stop()
    print(ingest_line(a.name, res) + f", {res.get('bytes_written_per_callback')} bytes written",
          flush=True)
    save(a.out_dir, a.name, res)
    return 0 if res["arrived"] >= res["accepted"] else 1


def children(pid):
    """The processes whose parent is `pid` (for nginx's master: its workers)."""
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
        except (OSError, IndexError, ValueError):
            continue
    return out


def cmd_recovery(a):
    """r. kill -9 with every accepted event still queued, then a restart. nginx's workers
    are stopped (SIGSTOP) while the events are ingested: the kernel still completes
    Herald's connections and takes its requests, so its first sends are on the wire and
    unanswered, as at a crash, and nothing is delivered. (A port that refuses would make
    each first attempt a recorded failure waiting for its retry, and a receiver of the
    driver's own would put Python's speed in the figure.) The batches go one request at a
    time, so each stream's events are accepted in the order of their ids. Herald gets
    SIGKILL right after the last 202; the workers resume and read what was on the wire
    (answered to no one: Herald sends those again); the same `herald serve` starts on the
    same data dir. From the restart command: the time until every event has arrived at
    least once, the duplicates, and whether each stream's first arrivals kept its order."""
    tag = f"rec-{uuid.uuid4().hex[:8]}"
    workers = children(a.nginx_pid)
    if not workers:
        raise RuntimeError(f"no nginx workers under pid {a.nginx_pid}")
    # No send may time out while nginx is stopped (a slow ingest on a busy machine): it
    # would be a failure with its retry scheduled, not a send at the restart.
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"),
               {"HERALD_DELIVERY_TIMEOUT": "30s"})
    try:
        h.create_config(f"http://127.0.0.1:{a.nginx_port}/cb")
        bodies = batch_bodies(tag, a.events, a.batch, a.streams)
        log = AccessLog(a.access_log)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            deliveries, errors = ingest_all([h], bodies, 1, time.time() + a.time_limit)
            h.proc.send_signal(signal.SIGKILL)
            h.proc.wait(timeout=30)
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.5)  # nginx reads what was on the wire before the restart, not during it
        # The new process counts from zero: its start-up is part of the recovery's cost.
        marks = dict(cpu_marks([h]), herald_cpu_s=0.0, herald_write_bytes=0)
        t0 = time.time()
        h.restart()
        first, stats = follow_arrivals(log, tag, a.events, a.stall, t0 + a.time_limit)
        time.sleep(1)  # repeats still on their way count as duplicates too
        stats["duplicates"] += sum(1 for _, status, eid, _ in log.new_lines()
                                   if eid.startswith(tag) and status.startswith("2"))
        ids = [f"{tag}-{i:07d}" for i in range(a.events)]  # stream i % streams, accepted in this order
        out_of_order = 0
        for s in range(a.streams):
            times = [first[e] for e in ids[s::a.streams] if e in first]
            out_of_order += sum(1 for x, y in zip(times, times[1:]) if y < x)
        res = {
            "events": a.events, "batch": a.batch, "streams": a.streams,
            "deliveries_accepted": deliveries, "ingest_errors": errors[:20],
            "ingest_error_count": len(errors), "arrived": len(first),
            "recovered_s": round(max(first.values()) - t0, 3) if len(first) == a.events else None,
            "arrived_before_restart": sum(1 for t in first.values() if t < t0),
            "out_of_order": out_of_order, "in_order": out_of_order == 0,
            "log_warn_error": h.log_counts(), **stats,
            **context([h], marks, len(first)),
        }
        save_metrics(h, a.out_dir, tag)
    finally:
        h.stop()
    print(f"recovery: {res['arrived']}/{a.events} arrived, all {res['recovered_s']} s after the restart "
          f"command ({res['arrived_before_restart']} before it: sends on the wire at the kill); "
          f"{res['duplicates']} duplicates; in order: {'yes' if res['in_order'] else 'no'}; "
          f"{res.get('cpu_us_per_callback')} us CPU and {res.get('bytes_written_per_callback')} bytes "
          f"written per callback", flush=True)
    save(a.out_dir, "recovery", res)
    return 0 if res["arrived"] == a.events else 1


def cmd_ceiling(a):
    """i. What this machine allows Herald's parts with no store between them (the `ceiling`
    example): b's delivery leg alone (render, sign, POST through Herald's client, 32 at
    once), and e's two legs (wrk -> axum ingest -> the same client -> nginx)."""
    url = f"http://127.0.0.1:{a.nginx_port}/cb"
    sends = []
    for r in range(a.runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([a.ceiling, "send", url, str(a.events)], capture_output=True,
                             text=True, timeout=600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            print(f"ceiling send failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
            return 1
        res = json.loads(out.stdout.strip().splitlines()[-1])
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        res["cpu_us_per_callback"] = round(cpu * 1e6 / max(res["answered_2xx"], 1), 1)
        print(f"ceiling send run {r + 1}/{a.runs}: {res['answered_2xx']} callbacks in "
              f"{res['seconds']:.2f} s = {res['per_s']:,.0f}/s, {res['cpu_us_per_callback']} us CPU each",
              flush=True)
        sends.append(res)
    tag = f"ceil-{uuid.uuid4().hex[:8]}"
    relay = Relay(a.ceiling, url, os.path.join(a.out_dir, f"{tag}.log"))
    try:
        relayed = wrk_single_events(a, relay, tag)
    finally:
        relay.stop()
    print(ingest_line("ceiling relay", relayed), flush=True)
    save(a.out_dir, "ceiling", {
        "send": {"runs": sends, "median_callbacks_per_s": statistics.median(r["per_s"] for r in sends),
                 "median_cpu_us_per_callback": statistics.median(r["cpu_us_per_callback"] for r in sends)},
        "relay": relayed})
    return 0 if relayed["arrived"] >= relayed["accepted"] else 1


def queue_figures(metrics_text):
    """Gauges in /metrics that look like a queue depth (names vary; reported as found)."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m and re.search(r"queue|pending|depth|in_flight|oldest_due|^herald_deliveries\{", m.group(1)) \
                and "_bucket" not in m.group(1):
            out[m.group(1)] = m.group(2)
    return out


def cmd_memory(a):
    tag = f"mem-{uuid.uuid4().hex[:8]}"
    # A bound socket that never listens: connections to it are refused at once.
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    down_port = down.getsockname()[1]
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"),
               {"HERALD_RETRY_SCHEDULE": a.retry_schedule})
    samples = []
    try:
        rss0 = h.status("VmRSS")
        h.create_config(f"http://127.0.0.1:{down_port}/cb")
        bodies = batch_bodies(tag, a.events, a.batch, a.streams)
        done = [0]
        marks = cpu_marks([h])
        t0 = time.time()

        def progress():
            done[0] += 1
            if done[0] % 100 == 0:
                print(f"  memory: {done[0] * a.batch} events ingested, {time.time() - t0:.0f} s, "
                      f"VmRSS {h.status('VmRSS'):.1f} MiB", flush=True)

        deliveries, errors = ingest_all([h], bodies, a.threads, t0 + a.time_limit, progress)
        t_ingested = time.time()
        # Settle: until VmRSS moved less than 1 MiB and the queue gauges did not change over
        # the last 10 s, at most `settle` seconds.
        end = time.time() + a.settle
        while time.time() < end:
            samples.append((time.time(), h.status("VmRSS"), queue_figures(h.metrics())))
            old = [s for s in samples if s[0] <= samples[-1][0] - 10]
            if old and abs(old[-1][1] - samples[-1][1]) < 1.0 and old[-1][2] == samples[-1][2]:
                break
            time.sleep(2)
        res = {
            "events": a.events, "batch": a.batch, "streams": a.streams,
            "retry_schedule": a.retry_schedule, "deliveries_accepted": deliveries,
            "ingest_errors": errors[:20], "ingest_error_count": len(errors),
            "ingest_s": round(t_ingested - t0, 1),
            "ingest_events_per_s": round(a.events / max(t_ingested - t0, 1e-9), 1),
            "settle_s": round(time.time() - t_ingested, 1),
            "rss_start_mib": round(rss0, 1), "rss_mib": round(h.status("VmRSS"), 1),
            "hwm_mib": round(h.status("VmHWM"), 1),
            "queue_metrics": samples[-1][2] if samples else {},
            "settle_samples": [(round(t - t_ingested, 1), round(r, 1), q) for t, r, q in samples],
            "store_bytes": sum(os.path.getsize(os.path.join(d, f))
                               for d, _, fs in os.walk(h.data_dir) for f in fs),
            "log_warn_error": h.log_counts(),
            **context([h], marks),
        }
        res["log"] = log_latency(h)
        res["idle"] = idle_cpu(h, a.idle_window or max(60.0, a.events / 1e6 * 15))
        save_metrics(h, a.out_dir, tag)
    finally:
        h.stop()
        down.close()
    print(f"memory: {a.events} events ingested in {res['ingest_s']} s "
          f"({res['ingest_error_count']} errors); VmRSS {res['rss_mib']} MiB after {res['settle_s']} s, "
          f"peak {res['hwm_mib']} MiB; store {res['store_bytes'] / 2**20:.0f} MiB; "
          f"delivery log first page {res['log']['first_page']['median_ms']} ms; idle with it all "
          f"pending {res['idle']['cpu_share_of_a_core_pct']}% of a core over {res['idle']['window_s']} s",
          flush=True)
    save(a.out_dir, "memory", res)
    return 0


def idle_cpu(h, window):
    """Herald's CPU over `window` seconds with nothing to do, from /proc/PID/stat. With the
    whole backlog waiting for its retry, this is what the store's upkeep costs at that size
    (the queue gauges' count, retention, checkpoints); the window should span the gauges'
    slowest refresh (100 x the time of one count: about 2 minutes at 10M pending)."""
    cpu0, t0 = h.cpu_s(), time.time()
    time.sleep(window)
    cpu1, t1 = h.cpu_s(), time.time()
    return {"window_s": round(t1 - t0, 1), "herald_cpu_s": round(cpu1 - cpu0, 3),
            "cpu_share_of_a_core_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2)}


def log_latency(h, repeat=21):
    """The delivery log with the history Herald holds: the median and worst time of its
    first page, unfiltered, by status and by event id, each asked `repeat` times."""
    queries = {
        "first_page": "?limit=10",
        "first_page_100": "?limit=100",
        "status_failed": "?status=failed&limit=10",
        "by_event_id": f"?event_id={PROJECT}-not-there&limit=10",
    }
    out = {}
    c = h.conn(timeout=60)
    for name, query in queries.items():
        times, total = [], None
        for _ in range(repeat):
            t = time.perf_counter()
            status, data = h.request(c, "GET", f"/v1/{PROJECT}/record/deliveries{query}")
            times.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise RuntimeError(f"delivery log {query}: {status} {data[:200]!r}")
            total = json.loads(data)["total"]
        out[name] = {"query": query, "median_ms": round(statistics.median(times), 1),
                     "max_ms": round(max(times), 1), "total": total}
    c.close()
    return out


class SilentEndpoints:
    """Sockets that accept connections and never answer: each holds every callback sent to
    it for the whole delivery timeout."""

    def __init__(self, n):
        self.socks, self.held, self.stop = [], [], False
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(4096)
            s.settimeout(0.2)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s):
        while not self.stop:
            try:
                conn, _ = s.accept()
                self.held.append(conn)
            except OSError:
                continue

    def urls(self):
        return [f"http://127.0.0.1:{s.getsockname()[1]}/cb" for s in self.socks]

    def close(self):
        self.stop = True
        for c in self.held + self.socks:
            c.close()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def cmd_idle(a):
    """Every due delivery belongs to an endpoint at its cap: the dispatcher has nothing to
    do until a slot frees. Herald's CPU over `a.window` seconds, from /proc/PID/stat."""
    tag = f"idle-{uuid.uuid4().hex[:8]}"
    silent = SilentEndpoints(a.endpoints)
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"),
               {"HERALD_DELIVERY_TIMEOUT": "600s", "HERALD_RETRY_SCHEDULE": "0s,1h"})
    try:
        c = h.conn()
        for k, url in enumerate(silent.urls()):
            h.create_config(url, domain=f"idle{k}.example.com")
            evs = [dict(event(f"{tag}-{k}-{i}", i, a.per_endpoint), publish_domain=f"idle{k}.example.com")
                   for i in range(a.per_endpoint)]
            status, data = h.request(c, "POST", EVENTS_PATH, json.dumps({"events": evs}))
            if status != 202:
                raise RuntimeError(f"ingest: {status} {data[:200]!r}")
        c.close()
        # Until every endpoint's slots are taken (the in-flight gauge stops rising).
        deadline, last, steady = time.time() + 60, None, 0
        while time.time() < deadline and steady < 3:
            now = metric(h.metrics(), "herald_deliveries_in_flight")
            steady = steady + 1 if now is not None and now == last and now > 0 else 0
            last = now
            time.sleep(1)
        connections = len(silent.held)
        res = {
            "endpoints": a.endpoints, "events_per_endpoint": a.per_endpoint,
            "in_flight": last, "connections_held": connections,
            **idle_cpu(h, a.window),
            "loadavg": open("/proc/loadavg").read().split()[:3],
            "log_warn_error": h.log_counts(),
        }
    finally:
        h.stop()
        silent.close()
    print(f"idle: {a.endpoints} silent endpoints holding {res['in_flight']:.0f} callbacks; Herald used "
          f"{res['herald_cpu_s']} s of CPU in {res['window_s']} s = {res['cpu_share_of_a_core_pct']}% of a core",
          flush=True)
    save(a.out_dir, "idle", res)
    return 0


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def cmd_retention(a):
    """A steady load of `a.rate` events/s delivered to nginx, with HERALD_RETENTION =
    `a.keep`: the data dir's size every `a.every` seconds for `a.duration` seconds. Once the
    retention period has passed, the cleaner frees as much as ingest adds and SQLite
    reuses the freed pages: the size levels off."""
    tag = f"ret-{uuid.uuid4().hex[:8]}"
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"),
               {"HERALD_RETENTION": a.keep})
    samples = []
    try:
        h.create_config(f"http://127.0.0.1:{a.nginx_port}/cb")
        c = h.conn()
        per_tick, tick = max(1, int(a.rate / 10)), 0.1
        t0 = next_sample = time.time()
        n = 0
        while time.time() - t0 < a.duration:
            evs = [event(f"{tag}-{n + k:08d}", n + k, 1000) for k in range(per_tick)]
            status, data = h.request(c, "POST", EVENTS_PATH, json.dumps({"events": evs}))
            if status != 202:
                raise RuntimeError(f"ingest: {status} {data[:200]!r}")
            n += per_tick
            if time.time() >= next_sample:
                text = h.metrics()
                samples.append({"t_s": round(time.time() - t0), "events": n,
                                "data_dir_mib": round(dir_bytes(h.data_dir) / 2**20, 2),
                                "deleted": metric(text, "herald_retention_deleted_total"),
                                "succeeded": metric(text, 'herald_deliveries{state="succeeded"}')})
                print(f"  retention: {samples[-1]}", flush=True)
                next_sample += a.every
            time.sleep(max(0.0, t0 + (n / a.rate) - time.time()))
        c.close()
        later = [s["data_dir_mib"] for s in samples if s["t_s"] >= a.duration / 2]
        res = {"rate": a.rate, "retention": a.keep, "duration_s": a.duration, "events": n,
               "samples": samples,
               "second_half_min_mib": min(later) if later else None,
               "second_half_max_mib": max(later) if later else None,
               "log_warn_error": h.log_counts()}
    finally:
        h.stop()
    print(f"retention: {n} events at {a.rate}/s with HERALD_RETENTION={a.keep}; data dir "
          f"{res['second_half_min_mib']}-{res['second_half_max_mib']} MiB over the second half "
          f"(at {samples[len(samples) // 4]['data_dir_mib']} MiB a quarter in)", flush=True)
    save(a.out_dir, "retention", res)
    return 0


# ---------------------------------------------------------------------------------------
# Report


def load(out_dir, name):
    p = os.path.join(out_dir, f"{name}.json")
    return json.load(open(p)) if os.path.exists(p) else None


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def per_callback(r):
    """`; N us CPU, M bytes written per callback` where a result has them."""
    if r.get("cpu_us_per_callback") is None:
        return ""
    return (f"; {r['cpu_us_per_callback']:,} us CPU, "
            f"{r.get('bytes_written_per_callback') or 0:,} bytes written per callback")


def all_of(checks):
    """True, False or None (could not be checked: a figure the run lacks, i under --only):
    one failed check fails the row even where another could not be made."""
    return False if False in checks else None if None in checks else True


def median_of(runs, get):
    """The median of `get(run)` over the runs that have it, or None."""
    values = [v for v in map(get, runs) if v is not None]
    return statistics.median(values) if values else None


def e2e_row(label, d, limit, send, share=None, of="send", cpu=None, written=None, wal=None):
    """A report row for an end-to-end result, read against the limit (a) and the ceiling's
    send (i) of the same run. Targets, where given: at least `share` x the figure `of`
    names ("limit" or "send"), at most `cpu` us CPU, `written` bytes written and `wal`
    PostgreSQL WAL records per callback (medians of the runs), and every event delivered.
    A target whose figure the run lacks (no i, say) is n/a unless another one failed."""
    runs = d["runs"]
    med = d["median_callbacks_per_s"]
    ratios = {"limit": med / limit if limit else None, "send": med / send if send else None}
    per = {"cpu": median_of(runs, lambda r: r.get("cpu_us_per_callback")),
           "written": median_of(runs, lambda r: r.get("bytes_written_per_callback")),
           "wal": median_of(runs, lambda r: r.get("postgres_per_callback", {}).get("wal_records"))}
    targets, per_targets, oks = [], [], [all(r["arrived"] == r["events"] for r in runs)]
    if share is not None:
        targets.append(f">= {share} x {of}")
        oks.append(None if ratios[of] is None else ratios[of] >= share)
    for key, bound, unit in (("cpu", cpu, "us CPU"), ("written", written, "B written"),
                             ("wal", wal, "WAL records")):
        if bound is not None:
            per_targets.append(f"<= {bound:,} {unit}")
            oks.append(None if per[key] is None else per[key] <= bound)
    if per_targets:
        targets.append(", ".join(per_targets) + " per callback")
    ok = all_of(oks) if targets else None
    return (f"{label}: {runs[0]['events']:,} events in batches of {runs[0]['batch']}, {runs[0]['streams']} streams",
            f"{med:,.0f} callbacks/s (median of {len(runs)}: "
            + ", ".join(f"{r['callbacks_per_s']:,.0f}" for r in runs) + ")"
            + "".join(f" = {v:.3f} x {k}" for k, v in ratios.items() if v)
            + per_callback({"cpu_us_per_callback": per["cpu"], "bytes_written_per_callback": per["written"]})
            + (f"; {per['wal']} WAL records per callback" if per["wal"] is not None else ""),
            "; ".join(targets) or "-", verdict(ok))


def cmd_hooks(a):
    """Media servers wait for a hook's answer and never retry it: SPEC §7 wants it within
    50 ms, once the session state it changes is durable. `a.threads` streams at once, each
    sending publish, `a.files` record_done hooks (of real FLV files, hard links of one, read
    by ffprobe in the background) and publish_done; the time from sending a hook to its answer."""
    tag = f"hooks-{uuid.uuid4().hex[:8]}"
    data_dir = os.path.join(a.out_dir, f"{tag}-data")
    record_dir = os.path.join(a.out_dir, f"{tag}-rec")
    os.makedirs(record_dir, exist_ok=True)
    flv = os.path.join(record_dir, "cam.flv")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                    "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "flv", "-y",
                    flv], check=True, timeout=120)
    for k in range(a.streams):
        for i in range(a.files):
            os.link(flv, os.path.join(record_dir, f"s{k}-{i}.flv"))
    # Sources need a record root the operator allows (SPEC §7): the record dir itself.
    h = Herald(a.herald, data_dir, os.path.join(a.out_dir, f"{tag}.log"),
               {"HERALD_RECORD_ROOTS": record_dir})
    try:
        out = subprocess.run(
            [a.herald, "sources", "create", "--project", PROJECT, "--engine", "nginx-rtmp",
             "--publish-domain", DOMAIN, "--record-dir", record_dir, "--max-pause", "1s",
             "--data-dir", data_dir, "--json"],
            check=True, capture_output=True, timeout=30, env=h.env).stdout
        hook_path = "/hooks/" + json.loads(out)["hook_url"].split("/hooks/", 1)[1]
        times, errors = [], []
        lock = threading.Lock()

        def stream(k):
            c = h.conn()
            bodies = [f"app=live&call=publish&name=s{k}&type=live"]
            bodies += [f"app=live&call=record_done&name=s{k}&path={record_dir}/s{k}-{i}.flv"
                       for i in range(a.files)]
            bodies += [f"app=live&call=publish_done&name=s{k}"]
            for body in bodies:
                t0 = time.perf_counter()
                c.request("POST", hook_path, body=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
                resp = c.getresponse()
                resp.read()
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    times.append(dt)
                    if resp.status != 200:
                        errors.append(resp.status)
            c.close()

        cpu0, t0 = h.cpu_s(), time.time()
        for start in range(0, a.streams, a.threads):
            ts = [threading.Thread(target=stream, args=(k,))
                  for k in range(start, min(a.streams, start + a.threads))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        elapsed = time.time() - t0
        res = {
            "streams": a.streams, "concurrent": a.threads, "hooks": len(times),
            "p50_ms": round(pct(times, 50), 2), "p99_ms": round(pct(times, 99), 2),
            "max_ms": round(max(times), 2), "hooks_per_s": round(len(times) / elapsed, 1),
            "herald_cpu_ms_per_hook": round(1000 * (h.cpu_s() - cpu0) / max(1, len(times)), 3),
            "errors": errors[:10], "error_count": len(errors),
            "log_warn_error": h.log_counts(),
        }
    finally:
        h.stop()
    print(f"hooks: {res['hooks']} hooks from {a.streams} streams, {a.threads} at once: answered in "
          f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, max {res['max_ms']} ms "
          f"({res['hooks_per_s']}/s, {res['error_count']} errors)", flush=True)
    save(a.out_dir, "hooks", res)
    return 0


# ---------------------------------------------------------------------------------------
# u: a recording uploaded to object storage


class Garage:
    """A single-node Garage (the S3-compatible store the tests use) on loopback, with one
    bucket and one key allowed on it."""

    BUCKET, REGION = "bench", "garage"

    def __init__(self, program, work_dir):
        self.program, self.dir = program, work_dir
        os.makedirs(work_dir, exist_ok=True)
        ports = [free_port() for _ in range(3)]
        self.config = os.path.join(work_dir, "garage.toml")
        with open(self.config, "w") as f:
            f.write(f'''metadata_dir = "{work_dir}/meta"
data_dir = "{work_dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{ports[0]}"
rpc_public_addr = "127.0.0.1:{ports[0]}"
rpc_secret = "{uuid.uuid4().hex}{uuid.uuid4().hex}"

[s3_api]
s3_region = "{self.REGION}"
api_bind_addr = "127.0.0.1:{ports[1]}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{ports[2]}"
''')
        self.endpoint = f"http://127.0.0.1:{ports[1]}"
        self.log = open(os.path.join(work_dir, "server.log"), "ab")
        self.proc = subprocess.Popen([program, "-c", self.config, "server"], stdout=self.log,
                                     stderr=self.log, env=dict(os.environ, RUST_LOG="garage=warn"))
        self.cli("status", retry_for=30)
        node = self.cli("node", "id", "-q").strip().split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node)
        self.cli("layout", "apply", "--version", "1")
        self.cli("bucket", "create", self.BUCKET, retry_for=30)
        key = self.cli("key", "create", "bench")
        field = lambda name: next(l.split(":", 1)[1].strip() for l in key.splitlines()
                                  if l.strip().startswith(name))
        self.key_id, self.secret = field("Key ID"), field("Secret key")
        self.cli("bucket", "allow", "--read", "--write", "--owner", self.BUCKET, "--key", "bench")

    def cli(self, *args, retry_for=0):
        deadline = time.time() + retry_for
        while True:
            r = subprocess.run([self.program, "-c", self.config, *args], capture_output=True,
                               timeout=60)
            if r.returncode == 0:
                return r.stdout.decode()
            if time.time() >= deadline or self.proc.poll() is not None:
                raise RuntimeError(f"garage {' '.join(args)}: {r.stderr.decode()[-500:]}")
            time.sleep(0.2)

    def rclone_remote(self):
        """An rclone on-the-fly remote for the bucket (no rclone.conf)."""
        return (f":s3,provider=Other,endpoint='{self.endpoint}',region={self.REGION},"
                f"access_key_id={self.key_id},secret_access_key={self.secret},"
                f"force_path_style=true:{self.BUCKET}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_recording(path, mib):
    """An FLV of at least `mib` MiB that ffprobe reads as a recording: 2 s of noise video
    (which does not compress), repeated with the concat demuxer (`-c copy`, fast). Kept for
    the next run."""
    if os.path.exists(path) and os.path.getsize(path) >= mib * 1048576:
        return
    part = path + ".part.flv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "nullsrc=size=1280x720:rate=25,geq=random(1)*255:128:128", "-t", "2",
                    "-c:v", "flv1", "-q:v", "2", "-f", "flv", part], check=True, timeout=600)
    copies = -(-mib * 1048576 // os.path.getsize(part))
    listing = path + ".txt"
    with open(listing, "w") as f:
        f.write("".join(f"file '{part}'\n" for _ in range(copies)))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", listing,
                    "-c", "copy", "-f", "flv", path], check=True, timeout=600)
    os.remove(part)
    os.remove(listing)


def cmd_upload(a):
    """One recording of `a.mib` MiB stored in a local Garage through Herald (a source with
    storage: hooks as nginx-rtmp sends them; the upload is Herald's multipart streaming),
    beside `rclone copyto` of the same file to the same bucket, alternating, `a.runs` each.
    Herald's MB/s is its own upload time (herald_upload_duration_seconds: read, send,
    confirm); its VmRSS is sampled every 20 ms from the hook until the file is stored."""
    tag = f"upload-{uuid.uuid4().hex[:8]}"
    record_dir = os.path.join(a.out_dir, f"{tag}-rec")
    os.makedirs(record_dir)
    source_file = os.path.join(os.path.dirname(os.path.abspath(a.out_dir)), f"upload-{a.mib}MiB.flv")
    big_recording(source_file, a.mib)
    size = os.path.getsize(source_file)
    garage = Garage(a.garage, os.path.join(a.out_dir, f"{tag}-garage"))
    # The store is on loopback: the operator's choice, for the server and its CLI alike.
    h = Herald(a.herald, os.path.join(a.out_dir, f"{tag}-data"), os.path.join(a.out_dir, f"{tag}.log"),
               {"HERALD_RECORD_ROOTS": record_dir, "HERALD_ALLOW_PRIVATE_TARGETS": "true"})
    runs = []
    try:
        secret_file = os.path.join(a.out_dir, f"{tag}-secret")
        with open(secret_file, "w") as f:
            f.write(garage.secret)
        out = subprocess.run(
            [a.herald, "sources", "create", "--project", PROJECT, "--engine", "nginx-rtmp",
             "--publish-domain", DOMAIN, "--record-dir", record_dir, "--max-pause", "1s",
             "--storage-endpoint", garage.endpoint, "--storage-region", garage.REGION,
             "--bucket", garage.BUCKET, "--access-key-id", garage.key_id,
             "--secret-access-key-file", secret_file, "--path-style",
             "--data-dir", h.data_dir, "--json"],
            check=True, capture_output=True, timeout=30, env=h.env).stdout
        hook_path = "/hooks/" + json.loads(out)["hook_url"].split("/hooks/", 1)[1]

        def hook(body):
            c = h.conn()
            c.request("POST", hook_path, body=body,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status != 200:
                raise RuntimeError(f"hook {body}: {r.status}")

        def uploads():
            text = h.metrics()
            return (metric(text, 'herald_uploads_total{outcome="stored"}') or 0,
                    metric(text, "herald_upload_duration_seconds_sum") or 0.0)

        for i in range(a.runs):
            t0 = time.perf_counter()
            # rclone 1.60 fails whenever AWS_CA_BUNDLE is set (its custom transport), and
            # the store is plain http: run it without.
            r = subprocess.run(["rclone", "copyto", source_file,
                                f"{garage.rclone_remote()}/rclone/run{i}.flv"],
                               capture_output=True, timeout=1800,
                               env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"})
            rclone_s = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"rclone copyto: {r.stderr.decode()[-500:]}")
            name = f"run{i}"
            os.link(source_file, os.path.join(record_dir, f"{name}.flv"))
            stored0, upload_s0 = uploads()
            rss0 = h.status("VmRSS")
            hook(f"app=live&call=publish&name={name}&type=live")
            t0 = time.perf_counter()
            hook(f"app=live&call=record_done&name={name}&path={record_dir}/{name}.flv")
            peak = rss0
            deadline = time.time() + a.time_limit
            while time.time() < deadline:
                peak = max(peak, h.status("VmRSS") or 0)
                if uploads()[0] > stored0:
                    break
                time.sleep(0.02)
            else:
                raise RuntimeError(f"the upload of {name} did not finish within {a.time_limit} s")
            wall_s = time.perf_counter() - t0
            upload_s = uploads()[1] - upload_s0
            hook(f"app=live&call=publish_done&name={name}")
            run = {"rclone_s": round(rclone_s, 2), "rclone_mb_per_s": round(size / 1e6 / rclone_s, 1),
                   "herald_upload_s": round(upload_s, 2),
                   "herald_mb_per_s": round(size / 1e6 / upload_s, 1),
                   "herald_hook_to_stored_s": round(wall_s, 2),
                   "rss_before_mib": round(rss0, 1), "rss_peak_mib": round(peak, 1),
                   "rss_growth_mib": round(peak - rss0, 1)}
            run["ratio"] = round(run["herald_mb_per_s"] / run["rclone_mb_per_s"], 3)
            print(f"upload run {i + 1}/{a.runs}: rclone {run['rclone_mb_per_s']} MB/s, Herald "
                  f"{run['herald_mb_per_s']} MB/s ({run['ratio']} x), RSS +{run['rss_growth_mib']} MiB",
                  flush=True)
            runs.append(run)
            os.remove(os.path.join(record_dir, f"{name}.flv"))
        res = {"bytes": size, "runs": runs,
               "median_rclone_mb_per_s": statistics.median(r["rclone_mb_per_s"] for r in runs),
               "median_herald_mb_per_s": statistics.median(r["herald_mb_per_s"] for r in runs),
               "median_ratio": statistics.median(r["ratio"] for r in runs),
               "max_rss_growth_mib": max(r["rss_growth_mib"] for r in runs),
               "log_warn_error": h.log_counts()}
    finally:
        h.stop()
        garage.stop()
    save(a.out_dir, "upload", res)
    return 0


def cmd_report(a):
    wrk, e2e, lat, mem, pg1, pg2 = (load(a.out_dir, n) for n in
                                    ("wrk", "e2e", "latency", "memory", "e2e-pg1", "e2e-pg2"))
    rows = []
    limit = wrk["median_rps"] if wrk else None
    # Issue 29's targets are ratios to i, measured in the same run.
    ceil = load(a.out_dir, "ceiling")
    send = ceil["send"]["median_callbacks_per_s"] if ceil else None
    relay = ceil["relay"]["accepted_per_s"] if ceil else None
    if wrk:
        rows.append(("a. receiver limit: wrk -t2 -c64 -d%ss, 628-byte POST to nginx" % wrk["duration_s"],
                     f"{limit:,.0f} req/s (median of {len(wrk['runs'])}: "
                     + ", ".join(f"{x:,.0f}" for x in wrk["runs"]) + ")", "-", "-"))
    if e2e:
        rows.append(e2e_row("b. end to end, embedded store", e2e, limit, send, share=0.5, of="send",
                            cpu=60, written=2500))
    if pg1:
        # 2 x b1's share of a at 00da880 (3,362 / 79,291 = 0.042), issue 29.
        rows.append(e2e_row("b1. end to end, PostgreSQL, one node", pg1, limit, send, share=0.085,
                            of="limit", wal=15))
    if pg2:
        rows.append(e2e_row("b2. end to end, PostgreSQL, two nodes", pg2, limit, send, wal=15))
    for d, bound, rate_share in ((lat, 10, None), (load(a.out_dir, "latency-5000"), 25, 0.97)):
        if not d:
            continue
        ok = None if d["p99_ms"] is None else (
            d["p99_ms"] <= bound and d["arrived"] == d["events"]
            and (rate_share is None or d["achieved_rate"] >= rate_share * d["target_rate"]))
        rows.append((f"c. latency: {d['target_rate']:g} events/s asked for {d['duration_s']:g} s "
                     f"({d['mode']}), nginx arrival - 202",
                     f"p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms "
                     f"({d['arrived']}/{d['events']} arrived, {d['achieved_rate']:g}/s achieved = "
                     f"{d['achieved_rate'] / d['target_rate']:.1%} of the asked rate)" + per_callback(d),
                     f"p99 <= {bound} ms" + (f", >= {rate_share:.0%} of the asked rate achieved"
                                             if rate_share else ""), verdict(ok)))
    ing = load(a.out_dir, "ingest")
    if ing:
        ratio = ing["accepted_per_s"] / relay if relay else None
        cpu = ing.get("cpu_us_per_callback")
        ok = all_of([None if ratio is None else ratio >= 0.5, ing["delivered_share"] >= 0.9,
                     None if cpu is None else cpu <= 90])
        rows.append((f"e. single-event ingest: wrk -c{ing['connections']} for {ing['duration_s']:g} s, "
                     "one event per request, all delivered",
                     f"{ing['accepted_per_s']:,.0f} accepted/s" + (f" = {ratio:.3f} x relay" if ratio else "")
                     + f" (202 p50 {ing['ingest_p50']}, p99 {ing['ingest_p99']}), "
                     f"{ing['delivered_per_s_in_window']:,.0f} delivered/s meanwhile, "
                     f"the rest within {ing['drain_after_s']} s" + per_callback(ing),
                     ">= 0.5 x relay, delivered within 10%; <= 90 us CPU per event", verdict(ok)))
    one = load(a.out_dir, "ingest-one-stream")
    if one:
        # One stream is delivered one at a time: its rate is what it delivers meanwhile.
        ratio = one["delivered_per_s_in_window"] / ing["accepted_per_s"] if ing else None
        ok = all_of([None if ratio is None else ratio >= 0.5, one["arrived"] >= one["accepted"]])
        rows.append((f"e1. single-event ingest, every event on one stream: wrk -c{one['connections']} "
                     f"for {one['duration_s']:g} s",
                     f"{one['accepted_per_s']:,.0f} accepted/s, {one['delivered_per_s_in_window']:,.0f} "
                     "delivered/s meanwhile" + (f" = {ratio:.3f} x e" if ratio else "")
                     + f" (one at a time), the rest within {one['drain_after_s']} s" + per_callback(one),
                     "delivered/s meanwhile >= 0.5 x e's accepted/s, all delivered (order: wrk "
                     "cannot tell it; r checks it)",
                     verdict(ok)))
    if ceil:
        snd, rel = ceil["send"], ceil["relay"]
        share = f" = {snd['median_callbacks_per_s'] / limit:.3f} x limit" if limit else ""
        rows.append(("i. ceiling: Herald's HTTP legs with no store (the `ceiling` example)",
                     f"send alone {snd['median_callbacks_per_s']:,.0f} callbacks/s{share} "
                     f"({snd['median_cpu_us_per_callback']} us CPU each; median of {len(snd['runs'])}); "
                     f"e's load relayed {rel['accepted_per_s']:,.0f} accepted/s, "
                     f"{rel['delivered_per_s_in_window']:,.0f} delivered/s meanwhile "
                     f"({rel.get('cpu_us_per_callback')} us CPU each)",
                     "- (bounds b and e)", "-"))
    rec = load(a.out_dir, "recovery")
    if rec:
        done = rec["recovered_s"] is not None
        rows.append((f"r. kill -9 recovery: {rec['events']:,} events over {rec['streams']} streams accepted, "
                     "none delivered; SIGKILL, restart on the same data dir",
                     (f"all delivered {rec['recovered_s']} s after the restart command" if done else
                      f"{rec['arrived']:,}/{rec['events']:,} delivered")
                     + f"; {rec['duplicates']} duplicates; {rec['arrived_before_restart']} had arrived "
                     "before the restart (sends on the wire at the kill, read once nginx resumed); in order: "
                     + ("yes" if rec["in_order"] else f"no ({rec['out_of_order']} out of order)")
                     + per_callback(rec),
                     "all <= 1 s after the restart, in order",
                     verdict(done and rec["recovered_s"] <= 1 and rec["in_order"])))
    if mem:
        rows.append((f"d. memory: {mem['events']:,} events queued for a down endpoint",
                     f"VmRSS {mem['rss_mib']} MiB (peak {mem['hwm_mib']} MiB; "
                     f"ingest {mem['ingest_events_per_s']:,.0f} events/s)",
                     "<= 150 MiB", verdict(mem["rss_mib"] <= 150 and mem["ingest_error_count"] == 0)))
    if mem and "log" in mem:
        first = mem["log"]["first_page"]
        rows.append((f"d2. delivery log, first page, {mem['events']:,} deliveries stored",
                     f"median {first['median_ms']} ms, worst {first['max_ms']} ms "
                     f"(status=failed: {mem['log']['status_failed']['median_ms']} ms, "
                     f"event_id: {mem['log']['by_event_id']['median_ms']} ms)",
                     "<= 50 ms", verdict(first["median_ms"] <= 50)))
    if mem and "idle" in mem:
        quiet = mem["idle"]
        rows.append((f"d3. idle CPU, {mem['events']:,} deliveries pending",
                     f"{quiet['cpu_share_of_a_core_pct']}% of a core ({quiet['herald_cpu_s']} s in {quiet['window_s']} s)",
                     "<= 1% of a core", verdict(quiet["cpu_share_of_a_core_pct"] <= 1)))
    idle = load(a.out_dir, "idle")
    if idle:
        rows.append((f"f. idle CPU: {idle['endpoints']} silent endpoints holding {idle['in_flight']:.0f} callbacks",
                     f"{idle['cpu_share_of_a_core_pct']}% of a core ({idle['herald_cpu_s']} s in {idle['window_s']} s)",
                     "< 1% of a core", verdict(idle["cpu_share_of_a_core_pct"] < 1)))
    ret = load(a.out_dir, "retention")
    if ret:
        rows.append((f"g. retention {ret['retention']}: {ret['rate']:g} events/s for {ret['duration_s']:g} s",
                     f"data dir {ret['second_half_min_mib']}-{ret['second_half_max_mib']} MiB over the second half",
                     "levels off", verdict(ret["second_half_max_mib"] is not None
                                           and ret["second_half_max_mib"] <= 1.5 * ret["second_half_min_mib"])))
    hooks = load(a.out_dir, "hooks")
    if hooks:
        rows.append((f"h. hook answers: {hooks['hooks']:,} nginx-rtmp hooks, {hooks['concurrent']} streams at once",
                     f"p50 {hooks['p50_ms']} ms, p99 {hooks['p99_ms']} ms, max {hooks['max_ms']} ms "
                     f"({hooks['hooks_per_s']:,.0f} hooks/s)",
                     "p99 <= 50 ms", verdict(hooks["p99_ms"] <= 50 and hooks["error_count"] == 0)))
    up = load(a.out_dir, "upload")
    if up:
        ok = up["median_ratio"] >= 0.9 and up["max_rss_growth_mib"] <= 64
        rows.append((f"u. upload: one {up['bytes'] / 1048576:,.0f} MiB recording to a local Garage, "
                     "Herald beside `rclone copyto`",
                     f"Herald {up['median_herald_mb_per_s']} MB/s, rclone {up['median_rclone_mb_per_s']} MB/s "
                     f"= {up['median_ratio']} x (median of {len(up['runs'])}); Herald's RSS grew "
                     f"<= {up['max_rss_growth_mib']} MiB",
                     ">= 0.9 x rclone, RSS growth <= 64 MiB", verdict(ok)))
    lines = ["| measurement | result | target | |", "|---|---|---|---|"]
    lines += [f"| {m} | {r} | {t} | {v} |" for m, r, t, v in rows]
    table = "\n".join(lines)
    notes = []
    for name, d in (("e2e", e2e), ("e2e-pg1", pg1), ("e2e-pg2", pg2), ("latency", lat),
                    ("latency-5000", load(a.out_dir, "latency-5000")), ("ingest", ing),
                    ("ingest-one-stream", one), ("recovery", rec), ("memory", mem),
                    ("idle", idle), ("retention", ret)):
        for r in (d["runs"] if d and "runs" in d else [d] if d else []):
            if r.get("ingest_error_count"):
                notes.append(f"- {name}: {r['ingest_error_count']} ingest errors, e.g. {r['ingest_errors'][:3]}")
            if "deliveries_accepted" in r and r["deliveries_accepted"] != r["events"]:
                notes.append(f"- {name}: 202 answers counted {r['deliveries_accepted']} deliveries for {r['events']} events")
            if r.get("duplicates"):
                notes.append(f"- {name}: {r['duplicates']} duplicate callbacks (same Herald-Event-Id twice)")
            if r.get("retries"):
                notes.append(f"- {name}: {r['retries']} callbacks with Herald-Delivery-Attempt > 1")
            if r.get("stalled"):
                notes.append(f"- {name}: callbacks stopped arriving ({r.get('arrived')} of {r.get('events')})")
            w, e = r.get("log_warn_error", (0, 0))
            if w or e:
                notes.append(f"- {name}: Herald logged {w} WARN and {e} ERROR lines")
    machine = a.machine or ""
    md = f"# Herald benchmark {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n\n{machine}\n\n{table}\n"
    if notes:
        md += "\nNotes:\n" + "\n".join(sorted(set(notes))) + "\n"
    with open(os.path.join(a.out_dir, "summary.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--herald", default="target/release/herald")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--nginx-port", type=int)
    p.add_argument("--access-log")
    p.add_argument("--nginx-pid", type=int, help="nginx's master (recovery stops its workers)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("probe")
    e = sub.add_parser("e2e")
    e.add_argument("--events", type=int, default=30000)
    e.add_argument("--batch", type=int, default=500)
    e.add_argument("--streams", type=int, default=1000)
    e.add_argument("--threads", type=int, default=4, help="concurrent ingest connections")
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--stall", type=float, default=30, help="give up after this long with no callback")
    e.add_argument("--time-limit", type=float, default=900)
    e.add_argument("--database-url", help="run on PostgreSQL (a fresh schema of this server per run)")
    e.add_argument("--nodes", type=int, default=1, help="herald serve processes (with --database-url)")
    e.add_argument("--name", default="e2e", help="name of the result (OUT_DIR/NAME.json)")
    lt = sub.add_parser("latency")
    lt.add_argument("--rate", type=float, default=1000)
    lt.add_argument("--duration", type=float, default=20)
    lt.add_argument("--batch", type=int, default=1, help="events per request (1: single events)")
    lt.add_argument("--connections", type=int, default=256, help="most requests in flight")
    lt.add_argument("--pace", default="target/release/examples/pace", help="the `pace` example")
    lt.add_argument("--streams", type=int, default=1000)
    lt.add_argument("--stall", type=float, default=30)
    lt.add_argument("--name", default="latency", help="name of the result (OUT_DIR/NAME.json)")
    ig = sub.add_parser("ingest")
    ig.add_argument("--connections", type=int, default=64)
    ig.add_argument("--wrk-threads", type=int, default=2)
    ig.add_argument("--duration", type=float, default=10)
    ig.add_argument("--streams", type=int, default=1000)
    ig.add_argument("--stall", type=float, default=30)
    ig.add_argument("--name", default="ingest", help="name of the result (OUT_DIR/NAME.json)")
    rc = sub.add_parser("recovery")
    rc.add_argument("--events", type=int, default=3000)
    rc.add_argument("--batch", type=int, default=500)
    rc.add_argument("--streams", type=int, default=300)
    rc.add_argument("--stall", type=float, default=30)
    rc.add_argument("--time-limit", type=float, default=120, help="for the ingest, and for the recovery")
    ce = sub.add_parser("ceiling")
    ce.add_argument("--ceiling", default="target/release/examples/ceiling")
    ce.add_argument("--events", type=int, default=300000, help="callbacks per send run")
    ce.add_argument("--runs", type=int, default=3)
    ce.add_argument("--connections", type=int, default=64)
    ce.add_argument("--wrk-threads", type=int, default=2)
    ce.add_argument("--duration", type=float, default=10)
    ce.add_argument("--streams", type=int, default=1000)
    ce.add_argument("--stall", type=float, default=30)
    m = sub.add_parser("memory")
    m.add_argument("--events", type=int, default=1000000)
    m.add_argument("--batch", type=int, default=1000)
    m.add_argument("--streams", type=int, default=1000)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--retry-schedule", default="0s,1h,1h")
    m.add_argument("--settle", type=float, default=120, help="longest wait for the queue to settle")
    m.add_argument("--time-limit", type=float, default=1800)
    m.add_argument("--idle-window", type=float,
                   help="seconds of Herald's CPU measured afterwards, the backlog all pending "
                        "(default 15 s per million events, at least 60 s: the queue gauges' "
                        "slowest refresh grows with the queue)")
    i = sub.add_parser("idle")
    i.add_argument("--endpoints", type=int, default=10)
    i.add_argument("--per-endpoint", type=int, default=100)
    i.add_argument("--window", type=float, default=30, help="seconds of CPU measured")
    rt = sub.add_parser("retention")
    rt.add_argument("--rate", type=float, default=500, help="events per second")
    rt.add_argument("--keep", default="10s", help="HERALD_RETENTION")
    rt.add_argument("--duration", type=float, default=180)
    rt.add_argument("--every", type=float, default=10, help="seconds between samples")
    hk = sub.add_parser("hooks")
    hk.add_argument("--streams", type=int, default=200)
    hk.add_argument("--threads", type=int, default=16, help="streams sending hooks at once")
    hk.add_argument("--files", type=int, default=3, help="record_done hooks per stream")
    up = sub.add_parser("upload")
    up.add_argument("--garage", required=True, help="the garage program")
    up.add_argument("--mib", type=int, default=1024, help="the recording's size")
    up.add_argument("--runs", type=int, default=3)
    up.add_argument("--time-limit", type=float, default=900, help="per upload")
    r = sub.add_parser("report")
    r.add_argument("--machine", default="")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return {"probe": cmd_probe, "e2e": cmd_e2e, "latency": cmd_latency, "ingest": cmd_ingest,
            "recovery": cmd_recovery, "ceiling": cmd_ceiling, "memory": cmd_memory,
            "idle": cmd_idle, "retention": cmd_retention, "hooks": cmd_hooks, "upload": cmd_upload,
            "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
