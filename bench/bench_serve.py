"""Benchmark ``fdcore serve`` against ``fdcore predict`` on the same ensemble, images and machine, in one run.

    .venv/bin/python bench/bench_serve.py --ensemble fdcore-demo/ensemble --images ../shared/data/aigc-sd1x \
        --json-out bench/results/serve.json

Phases (loopback only; every loop is bounded in count and time):

1. predict: ``run_predict`` on the images with the ensemble already loaded (steady-state images/s: listing, decoding
   in DataLoader workers, scoring, writing the CSVs; the median of three runs);
2. latency and throughput: one server (defaults: --max-batch-size 16, --max-wait-ms 10); 1, 8 and 32 concurrent
   clients, each a keep-alive connection posting one image per request; p50/p95/p99 latency, images/s, and at one
   client the latency added over the model's own batch time (from the server's fdcore_batch_seconds), and the CPU
   the load generator itself used (it shares the machine's cores with the server);
   every served score is compared with predict's (formatted as in predictions.csv);
3. overload: a server with a small --max-queue and 4x more clients than it admits: the status codes seen (only 200 and
   429 may appear) and the RSS before/after;
4. soak: ``--soak`` requests (default 10,000) at 8 clients on that server: RSS growth from after the first 1,000 to the
   end (target < 5 %).

The saturation ratio (target >= 0.9) is the best served images/s over predict's images/s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import command_line, finish, machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Served:
    def __init__(self, ensemble: Path, *options: str, log: Path):
        self.port = free_port()
        self.log = log.open("wb")
        self.process = subprocess.Popen([str(Path(sys.executable).with_name("fdcore")), "serve", "--ensemble",
                                         str(ensemble), "--port", str(self.port), "--access-log", "", *options],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: see {log}")
            time.sleep(0.2)

    def get(self, path: str):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()

    def batch_seconds(self) -> tuple[float, float]:
        text = self.get("/metrics")[1].decode()
        total = float(re.search(r"^fdcore_batch_seconds_sum (\S+)$", text, re.M).group(1))
        count = float(re.search(r"^fdcore_batch_seconds_count (\S+)$", text, re.M).group(1))
        return total, count

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.log.close()
        return code


def load(server: Served, images: list[Path], clients: int, requests: int, max_seconds: float,
         per_request: int = 1) -> dict:
    """``clients`` threads post ``per_request`` images per request (round robin) until ``requests`` requests are done
    or time runs out (one image: a raw body; several: multipart)."""
    payloads = [(path.name, path.read_bytes()) for path in images]
    boundary = "benchboundary"

    def body_for(index):
        if per_request == 1:
            name, body = payloads[index % len(payloads)]
            return [name], body, {"Content-Type": "image/jpeg", "X-Image-Name": name}
        chosen = [payloads[(index * per_request + k) % len(payloads)] for k in range(per_request)]
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + body + b"\r\n" for name, body in chosen]
        return ([name for name, _ in chosen], b"".join(parts) + f"--{boundary}--\r\n".encode(),
                {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    latencies, statuses, scores = [], {}, {}
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            names, body, headers = body_for(index)
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/score", body, headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                status, payload = "connection_error", b""
            elapsed = time.perf_counter() - started
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(elapsed)
                    for result in json.loads(payload)["results"]:
                        scores[result["name"]] = result["score"]
            if status == 429:
                time.sleep(0.01)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()

    def quantile(q):
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

    return {"clients": clients, "requests": sum(statuses.values()), "statuses": {str(k): v for k, v in statuses.items()},
            "wall_s": round(wall, 2), "images_per_request": per_request,
            "images_per_s": round(statuses.get(200, 0) * per_request / wall, 2),
            "p50_ms": quantile(0.5), "p95_ms": quantile(0.95), "p99_ms": quantile(0.99),
            "load_generator_cpu_cores": round(client_cpu / wall, 2), "scores": scores}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", type=Path, default=REPO / "fdcore-demo" / "ensemble")
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "aigc-sd1x")
    parser.add_argument("--count", type=int, default=240, help="images used (sorted, spread over the folder)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=40.0, help="time limit per load phase")
    parser.add_argument("--soak", type=int, default=10_000)
    parser.add_argument("--images-per-request", default="1,4",
                        help="request sizes measured at each concurrency (the latency phase)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    from fdcore.ensemble_io import load_ensemble
    from fdcore.predict import PredictOptions, run_predict
    from fdcore.predict.outputs import format_score
    from fdcore.walk import walk_images

    candidates = walk_images(args.images).candidates
    step = max(1, len(candidates) // args.count)
    chosen = [Path(candidate.path) for candidate in candidates[::step][:args.count]]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    folder = work / "images"
    folder.mkdir()
    for path in chosen:  # hard links: predict scores the same bytes without copying them
        os.link(path, folder / path.name) if os.stat(path).st_dev == os.stat(work).st_dev else \
            (folder / path.name).write_bytes(path.read_bytes())
    images = sorted(folder.iterdir())

    ensemble = load_ensemble(args.ensemble, device="cpu")
    run_predict(PredictOptions(images=str(folder), ensemble=str(args.ensemble), out=str(work / "warm"), quiet=True,
                               workers=2), ensemble=ensemble)
    timings = []
    for repeat in range(3):
        started = time.perf_counter()
        summary = run_predict(PredictOptions(images=str(folder), ensemble=str(args.ensemble), quiet=True, workers=2,
                                             out=str(work / f"predict{repeat}")), ensemble=ensemble)
        timings.append(time.perf_counter() - started)
    predict_s = sorted(timings)[1]  # the median of three runs
    predict_rate = summary.scored / predict_s
    expected = {line.split(",")[0]: line.split(",")[1]
                for line in (work / "predict0" / "predictions.csv").read_text().splitlines()[1:]}
    del ensemble
    print(f"predict: {summary.scored} images in {predict_s:.2f} s = {predict_rate:.1f} images/s", flush=True)

    rows = [{"phase": "predict", "images": summary.scored, "seconds": round(predict_s, 2),
             "images_per_s": round(predict_rate, 2)}]
    server = Served(args.ensemble, log=work / "serve.log")
    mismatches = 0
    try:
        for clients, per_request in [(int(c), int(k)) for k in args.images_per_request.split(",")
                                     for c in args.clients.split(",")]:
            load(server, images[:16], clients, 2 * clients, 30, per_request)  # warm connections and batch shapes
            before = server.batch_seconds()
            result = load(server, images, clients, max(3 * len(images) // per_request, 24 * clients), args.seconds,
                          per_request)
            after = server.batch_seconds()
            batch_ms = 1000 * (after[0] - before[0]) / max(1.0, after[1] - before[1])
            mismatches += sum(1 for name, score in result.pop("scores").items()
                              if format_score(score) != expected[name])
            row = {"phase": "latency", **result, "batch_ms": round(batch_ms, 2),
                   "ratio_vs_predict": round(result["images_per_s"] / predict_rate, 3)}
            if clients == 1 and per_request == 1:
                row["added_over_batch_ms"] = round(result["p50_ms"] - batch_ms, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stop()

    small = Served(args.ensemble, "--max-queue", "8", log=work / "serve-overload.log")
    try:
        rss_start = rss_mib(small.process.pid)
        overload = load(small, images, 32, 3000, args.seconds)
        overload.pop("scores")
        overload_row = {"phase": "overload", **overload, "max_queue": 8, "rss_start_mib": round(rss_start, 1),
                        "rss_end_mib": round(rss_mib(small.process.pid), 1)}
        rows.append(overload_row)
        print(json.dumps(overload_row), flush=True)
        warm = load(small, images, 8, 1000, 600)
        rss_warm = rss_mib(small.process.pid)
        soak = load(small, images, 8, max(0, args.soak - warm["requests"]), 900)
        soak.pop("scores")
        rss_end = rss_mib(small.process.pid)
        soak_row = {"phase": "soak", "requests": warm["requests"] + soak["requests"],
                    "statuses": soak["statuses"], "images_per_s": soak["images_per_s"],
                    "rss_after_1000_mib": round(rss_warm, 1), "rss_end_mib": round(rss_end, 1),
                    "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2)}
        rows.append(soak_row)
        print(json.dumps(soak_row), flush=True)
    finally:
        exit_code = small.stop()

    best = max(row["images_per_s"] for row in rows if row["phase"] == "latency")
    bad_statuses = {status for row in rows if row["phase"] in ("overload", "soak")
                    for status in row["statuses"] if status not in ("200", "429")}
    checks = {"saturation_ratio": round(best / predict_rate, 3), "saturation_ratio_target": 0.9,
              "score_mismatches_vs_predict": mismatches, "unexpected_statuses": sorted(bad_statuses),
              "soak_rss_growth_pct": soak_row["rss_growth_pct"], "server_exit_code": exit_code}
    rows.append({"phase": "checks", **checks})
    if mismatches or bad_statuses or exit_code != 0:
        rows[-1]["error"] = "served scores differ from predict, or a 5xx / connection error, or an unclean stop"
    environment = {**machine(), "command": command_line(), "ensemble": str(args.ensemble),
                   "images": f"{len(images)} from {args.images}"}
    table = "\n".join(json.dumps(row) for row in rows)
    return finish(args.json_out, environment, rows, table,
                  f"fdcore serve vs predict: saturation {checks['saturation_ratio']}x predict's images/s "
                  f"({best:.1f} vs {predict_rate:.1f}); {mismatches} score mismatches")


if __name__ == "__main__":
    sys.exit(main())
