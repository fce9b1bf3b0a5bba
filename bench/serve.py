"""Section `serve`: OSCAR sync requests with the model kept warm (issue 17).

1. OSCAR sync, the DEEPaaS demo model, one request at a time, the way the classic watchdog runs
   them (a `conveyor run` per request, the body on stdin): the warm daemon path (`conveyor: warm:
   true`, daemon already loaded) vs a fresh `conveyor run` per request (the model loaded every
   time); faas-supervisor 1.5.8 is not run here (its venv is built by `python -m bench.faas`, and it
   has no warm mode to compare with: it is a fresh process per request too). The model's own time
   is the daemon's mean `handler` step (its /metrics).
2. `conveyor serve` over HTTP with YOLOv3-tiny (darknet handler, OpenCV backend; the weights from
   `conveyor weights`) at concurrency 1, 2 and 8 (8 slots: 8 clients queue on 2 cores): requests/s,
   p50/p99 latency and the p50 overhead over the model's own mean time (/metrics).

    python -m bench --only serve --repeat 0.2
    python -m bench.serve [ROUNDS]          # alone, with its own S3 server
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.measure import Samples, ratio
from bench.server import Bench

REPO = Path(__file__).resolve().parents[1]
CONVEYOR = [sys.executable, "-m", "conveyor"]
VENV_BIN = Path(sys.executable).parent
DOG = Path("/usr/share/darknet/data/dog.jpg")
DEMO_MODEL = "conveyor-demo"
CONCURRENCY = (1, 2, 8)
TARGET_SPEEDUP_VS_FAAS = 20.0  # the goals, shown beside the figures
TARGET_DAEMON_OVERHEAD_S = 0.060
TARGET_HTTP_OVERHEAD_S = 0.005


def _sample_body() -> bytes:
    data = DOG.read_bytes() if DOG.is_file() else os.urandom(160 * 1024)
    return base64.b64encode(data)


def _write(path: Path, definition: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


def _metric_sum_count(text: str, name: str, step: str) -> tuple[float, float]:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f'{name}_sum{{step="{step}"}}'):
            total = float(line.split()[-1])
        elif line.startswith(f'{name}_count{{step="{step}"}}'):
            count = float(line.split()[-1])
    return total, count


def _unix_get(path: Path, url: str) -> tuple[int, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = sock
    conn.request("GET", url)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


# -- 1. OSCAR sync, DEEPaaS demo model --------------------------------------------------------------


def measure_sync(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    try:
        from importlib.metadata import entry_points

        import deepaas  # noqa: F401
    except ImportError:
        return {"skipped": "deepaas is not installed (the deepaas extra)"}
    if DEMO_MODEL not in {ep.name for ep in entry_points(group="deepaas.v2.model")}:
        return {"skipped": f"the {DEMO_MODEL} plugin is not installed (tests/plugins/conveyor-demo-model)"}
    from conveyor.config import load_config
    from conveyor.platform import Platform
    from conveyor.serve.daemon import socket_path

    work = bench.dir("serve/sync")
    scratch = Path(tempfile.mkdtemp(prefix="cvb-", dir="/tmp"))  # short: the daemon's socket lives there
    definition = {"name": "bench-serve-sync", "log_level": "INFO",
                  "conveyor": {"handler": {"name": "deepaas", "mode": "warm", "model": DEMO_MODEL}, "timeout": 120}}
    cold_cfg = _write(work / "cold.yaml", definition)
    warm_cfg = _write(work / "warm.yaml", {**definition, "conveyor": {**definition["conveyor"], "warm": True}})
    env = bench.child_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
                          CONVEYOR_SCRATCH=str(scratch), Http_Method="POST", Http_Path="/",
                          Http_Content_Type="application/octet-stream", Http_Query="")
    body = _sample_body()

    def request(config: Path) -> float:
        started = time.perf_counter()
        proc = subprocess.run([*CONVEYOR, "run", "--config", str(config), "--platform", "oscar"], input=body,
                              capture_output=True, env=env, timeout=300)
        took = time.perf_counter() - started
        if proc.returncode != 0 or not proc.stdout.strip():
            raise RuntimeError(f"conveyor run exited {proc.returncode}: {proc.stderr.decode()[-800:]}")
        return took

    sock = socket_path(load_config(env, Platform.OSCAR, path=str(warm_cfg)), env)
    try:
        request(warm_cfg)  # cold: starts the daemon
        deadline = time.monotonic() + 120
        while True:
            try:
                if _unix_get(sock, "/_/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the warm daemon never became ready")
            time.sleep(0.1)
        request(warm_cfg)
        request(cold_cfg)
        samples = {"warm daemon": Samples("s"), "conveyor run": Samples("s")}
        for r in range(rounds):
            for peer, config in (("warm daemon", warm_cfg), ("conveyor run", cold_cfg)):
                seconds = request(config)
                samples[peer].add(seconds)
                log(f"  serve sync round {r + 1}/{rounds}  {peer:<14} {seconds * 1000:8.1f} ms")
        total, count = _metric_sum_count(_unix_get(sock, "/metrics")[1], "conveyor_serve_step_seconds", "handler")
    finally:
        _stop_daemon(sock)
        shutil.rmtree(scratch, ignore_errors=True)
    model = total / count if count else None
    warm_median = samples["warm daemon"].median
    return {
        "model": DEMO_MODEL,
        "body_bytes": len(body),
        "per_request": {p: s.summary() for p, s in samples.items()},
        "model_seconds_mean": None if model is None else round(model, 4),
        "daemon_overhead_s": None if model is None or warm_median is None else round(warm_median - model, 4),
        "target_overhead_s": TARGET_DAEMON_OVERHEAD_S,
        "speedup": {"conveyor run/warm daemon": ratio(samples["conveyor run"].median, warm_median)},
        "faas_supervisor": "not run: no warm mode to compare (python -m bench.faas builds its venv)",
    }


def _stop_daemon(sock: Path) -> None:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        pid = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4], "little")
        s.close()
        os.kill(pid, 15)
    except OSError:
        pass


# -- 2. conveyor serve over HTTP, YOLOv3-tiny ---------------------------------------------------------


def measure_http(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    from conveyor.handlers.darknet.weights import WEIGHTS_NAME, WeightsError, default_weights_dir, verify_weights

    weights = default_weights_dir(os.environ) / WEIGHTS_NAME
    try:
        verify_weights(weights)
        import cv2

        if not hasattr(cv2.dnn, "readNetFromDarknet"):
            return {"skipped": "this OpenCV has no darknet importer"}
    except (WeightsError, ImportError) as exc:
        return {"skipped": f"no YOLOv3-tiny weights or OpenCV ({exc}); `conveyor weights` fetches the weights"}
    if not DOG.is_file():
        return {"skipped": f"{DOG} is missing (the darknet package)"}
    work = bench.dir("serve/http")
    config = _write(work / "yolo.yaml", {
        "name": "bench-serve-yolo", "log_level": "WARNING",
        "conveyor": {"handler": {"name": "darknet", "backend": "opencv", "weights": str(weights)}, "timeout": 120},
    })
    body = _sample_body()
    proc = subprocess.Popen([*CONVEYOR, "serve", "--config", str(config), "--platform", "oscar", "--port", "0",
                             "--slots", str(max(CONCURRENCY))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=bench.child_env(LOG_LEVEL="INFO"))
    assert proc.stderr is not None
    url = None
    for raw in proc.stderr:
        if found := re.search(rb"conveyor serve on http://127\.0\.0\.1:(\d+)", raw):
            url = int(found.group(1))
            break
    if url is None:
        proc.kill()
        raise RuntimeError("conveyor serve did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep its pipe drained
    port = url
    try:
        _wait_ready(port)
        _post(port, body)  # warm-up
        results: dict[str, Any] = {}
        per_level = max(4, rounds * 4)
        for level in CONCURRENCY:
            before = _metric_sum_count(_get(port, "/metrics"), "conveyor_serve_step_seconds", "handler")
            latencies, took = _load(port, body, level, per_level * level)
            after = _metric_sum_count(_get(port, "/metrics"), "conveyor_serve_step_seconds", "handler")
            model = (after[0] - before[0]) / (after[1] - before[1]) if after[1] > before[1] else None
            p50 = statistics.median(latencies)
            p99 = sorted(latencies)[max(0, round(0.99 * len(latencies)) - 1)]
            results[str(level)] = {
                "requests": len(latencies), "req_per_s": round(len(latencies) / took, 2),
                "p50_s": round(p50, 4), "p99_s": round(p99, 4),
                "model_seconds_mean": None if model is None else round(model, 4),
                "overhead_p50_s": None if model is None else round(p50 - model, 4),
            }
            log(f"  serve http concurrency {level}: {results[str(level)]}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"model": "yolov3-tiny", "input": str(DOG), "concurrency": results,
            "target_overhead_p50_s": TARGET_HTTP_OVERHEAD_S}


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def _post(port: int, body: bytes, conn: http.client.HTTPConnection | None = None) -> float:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request("POST", "/", body=body, headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    data = response.read()
    took = time.perf_counter() - started
    if own:
        conn.close()
    if response.status != 200 or not data:
        raise RuntimeError(f"conveyor serve answered {response.status}: {data[:300]!r}")
    return took


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("conveyor serve never became ready")


def _load(port: int, body: bytes, clients: int, total: int) -> tuple[list[float], float]:
    """`total` requests from `clients` keep-alive connections; (latencies, wall seconds)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    left = [total]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                seconds = _post(port, body, conn)
                with lock:
                    latencies.append(seconds)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return latencies, time.perf_counter() - started


def measure(bench: Bench, rounds: int, log=print) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds}
    for name, part in (("sync", measure_sync), ("http", measure_http)):
        try:
            out[name] = part(bench, rounds, log=log)
        except Exception as exc:  # one part's failure keeps the other's figures
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  serve {name} failed: {out[name]['error']}")
    return out


def render(result: dict[str, Any]) -> str:
    """The section's table (markdown)."""
    lines = []
    sync = result.get("sync", {})
    if "per_request" in sync:
        per = sync["per_request"]
        lines.append("| OSCAR sync, DEEPaaS demo, per request | median | p75 |\n|---|---|---|")
        for peer, s in per.items():
            lines.append(f"| {peer} | {s['median'] * 1000:.1f} ms | {s.get('p75', 0) * 1000:.1f} ms |")
        lines.append(f"\nmodel {sync['model_seconds_mean']} s mean; daemon overhead {sync['daemon_overhead_s']} s "
                     f"(goal <= {TARGET_DAEMON_OVERHEAD_S}); speedup {sync['speedup']}")
    else:
        lines.append(f"OSCAR sync: {sync.get('skipped') or sync.get('error')}")
    http_part = result.get("http", {})
    if "concurrency" in http_part:
        lines.append("\n| conveyor serve, YOLOv3-tiny | req/s | p50 | p99 | model (mean) | p50 overhead |\n"
                     "|---|---|---|---|---|---|")
        for level, r in http_part["concurrency"].items():
            lines.append(f"| concurrency {level} | {r['req_per_s']} | {r['p50_s'] * 1000:.1f} ms | "
                         f"{r['p99_s'] * 1000:.1f} ms | {(r['model_seconds_mean'] or 0) * 1000:.1f} ms | "
                         f"{(r['overhead_p50_s'] or 0) * 1000:.1f} ms |")
    else:
        lines.append(f"\nconveyor serve over HTTP: {http_part.get('skipped') or http_part.get('error')}")
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    os.chdir(REPO)
    with Bench.start(None) as b:
        res = measure(b, int(sys.argv[1]) if len(sys.argv) > 1 else 3, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, indent=2))
    print(render(res))
