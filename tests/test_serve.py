"""fdcore serve: the real server in a subprocess on a free loopback port, driven over HTTP."""

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import predict_corpus as corpus
from conftest import fdcore_command
from fdcore.client import Client, ServiceError
from fdcore.predict import EXIT_COMPLETE, PredictOptions, run_predict
from fdcore.predict.outputs import format_score

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key-0123456789abcdef"
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``fdcore serve`` in a subprocess; stopped (SIGTERM, then SIGKILL) by the fixture that started it."""

    def __init__(self, ensemble, *options, key_file=None, tmp_path=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tmp_path) / f"serve-{self.port}.log"
        command = [str(Path(sys.executable).with_name("fdcore")), "serve", "--ensemble", str(ensemble),
                   "--port", str(self.port), *options]
        if key_file:
            command += ["--api-key-file", str(key_file)]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FDCORE_")}, **(env or {})}
        self.handle = self.log.open("wb")
        self.process = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT, env=env)
        self.client = Client(self.url, api_key=KEY if key_file else None, retries=0)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.client.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not become ready:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()
        return self.process.returncode

    def request(self, method, path, body=None, headers=None, key=KEY):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = dict(headers or {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        return response.status, payload, response


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Real CLIP (tiny) and NPR architectures, a folder of photos, and a server with a key file."""
    import torch

    import fdcore
    from fdcore.ensemble_io import write_ensemble

    root = tmp_path_factory.mktemp("serve")
    ensemble = root / "ensemble"
    for name, options in (("clip", fdcore.get_expert_class("clip").tiny_config()), ("npr", {"crop_size": 64, "crops": 2})):
        torch.manual_seed(0)
        fdcore.save_expert(fdcore.get_expert(name, **options), ensemble / name)
    write_ensemble(ensemble, [{"name": "clip", "path": "clip", "weight": 1.0},
                              {"name": "npr", "path": "npr", "weight": 1.0}])
    images = root / "images"
    images.mkdir()
    for index in range(11):
        (images / f"img_{index:02d}.jpg").write_bytes(corpus.jpeg_bytes(corpus.photo(800 + index, 90 + index, 120)))
    key_file = root / "keys.txt"
    key_file.write_text(f"# serving keys\n{KEY}\n")
    server = Server(ensemble, "--max-batch-size", "4", "--max-images-per-request", "16", "--max-body-mb", "1",
                    key_file=key_file, tmp_path=root)
    yield {"server": server, "ensemble": ensemble, "images": images, "root": root}
    assert server.stop() == 0, server.log.read_text()


def test_scores_equal_predict_whatever_the_request_sizes(served, tmp_path):
    server, images = served["server"], sorted(served["images"].iterdir())
    out = tmp_path / "predicted"
    summary = run_predict(PredictOptions(images=str(served["images"]), ensemble=str(served["ensemble"]),
                                         out=str(out), per_expert=True, quiet=True, workers=0, batch_size=5))
    assert summary.exit_code == EXIT_COMPLETE
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "image_name,score,p_clip,p_npr"
    expected = {line.split(",")[0]: line.split(",")[1:] for line in lines[1:]}
    got = {}
    for chunk in (images[:1], images[1:4], images[4:]):  # requests of 1, 3 and 7 images share batches differently
        for result in server.client.score(chunk):
            got[result["name"]] = [format_score(result["score"]), format_score(result["probabilities"]["clip"]),
                                   format_score(result["probabilities"]["npr"])]
    raw_status, raw_body, _ = server.request("POST", "/v1/score", images[5].read_bytes(),
                                             {"Content-Type": "image/jpeg", "X-Image-Name": images[5].name})
    assert raw_status == 200
    assert format_score(json.loads(raw_body)["results"][0]["score"]) == expected[images[5].name][0]
    assert got == expected


def test_hostile_uploads_get_their_reason_codes_and_the_server_keeps_serving(served):
    server = served["server"]
    good = corpus.jpeg_bytes(corpus.photo(5, 40, 50))
    uploads = [("truncated.jpg", good[: len(good) // 3]), ("empty.jpg", b""),
               ("bomb.png", corpus.png_header_only(30000, 30000)), ("notes.jpg", b"just some text, not an image"),
               ("svg.png", b"<svg xmlns='http://www.w3.org/2000/svg'/>"), ("good.jpg", good)]
    results = server.client.score(uploads)
    codes = {result["name"]: result["error"] for result in results}
    assert codes["empty.jpg"] == "empty_file"
    assert codes["bomb.png"] == "decompression_bomb"
    assert codes["notes.jpg"] == "not_an_image"
    assert codes["truncated.jpg"] in ("decode_failed", "truncated")
    assert codes["good.jpg"] is None and 0 <= results[-1]["score"] <= 1
    assert server.client.ready()
    assert server.client.score([("again.jpg", good)])[0]["score"] == results[-1]["score"]


def test_size_type_and_count_limits(served):
    server = served["server"]
    # refused from Content-Length alone: the answer comes before a byte of the body is sent
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/v1/score")
    for header, value in (("Authorization", f"Bearer {KEY}"), ("Content-Type", "image/jpeg"),
                          ("Content-Length", str(1024 * 1024 + 1))):
        connection.putheader(header, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "body_too_large"
    connection.close()

    # a chunked body without Content-Length is cut off while streaming
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/v1/score")
    connection.putheader("Authorization", f"Bearer {KEY}")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    try:
        for _ in range(40):
            chunk = b"y" * 65536
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the rest arrived
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "body_too_large"
    connection.close()

    status, body, _ = server.request("POST", "/v1/score", b"{}", {"Content-Type": "application/json"})
    assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
    tiny = corpus.jpeg_bytes(corpus.photo(6, 8, 8))
    with pytest.raises(ServiceError) as refused:
        server.client.score([(f"{index}.jpg", tiny) for index in range(17)])
    assert refused.value.status == 413 and refused.value.code == "too_many_images"
    assert server.client.ready()


def test_auth_missing_wrong_and_right_keys(served):
    server = served["server"]
    image = corpus.jpeg_bytes(corpus.photo(7, 30, 30))
    for key in (None, "wrong-key-0123456789abcdef", KEY[:-1]):
        status, body, response = server.request("POST", "/v1/score", image, {"Content-Type": "image/jpeg"}, key=key)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        assert response.getheader("WWW-Authenticate") == "Bearer"
    status, _, _ = server.request("GET", "/metrics", key=None)
    assert status == 401
    assert server.request("GET", "/v2/health/live", key=None)[0] == 200  # probes need no key
    assert server.request("POST", "/v1/score", image, {"Content-Type": "image/jpeg"})[0] == 200
    assert KEY not in server.log.read_text()  # keys never reach the log


def test_open_inference_protocol_v2_shapes(served):
    server = served["server"]
    name = "ensemble"
    status, body, _ = server.request("GET", f"/v2/models/{name}")
    metadata = json.loads(body)
    assert status == 200 and metadata["name"] == name and metadata["inputs"][0]["datatype"] == "BYTES"
    assert [output["name"] for output in metadata["outputs"]] == ["score", "probabilities", "error", "decision"]
    assert json.loads(server.request("GET", f"/v2/models/{name}/ready")[1]) == {"name": name, "ready": True}
    assert json.loads(server.request("GET", "/v2")[1])["name"] == "fdcore"
    images = sorted(served["images"].iterdir())[:2]
    payload = {"id": "req-1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                          "data": [base64.b64encode(images[0].read_bytes()).decode(), "%%%not-b64",
                                                   base64.b64encode(images[1].read_bytes()).decode()]}]}
    status, body, _ = server.request("POST", f"/v2/models/{name}/infer", json.dumps(payload),
                                     {"Content-Type": "application/json"})
    answer = json.loads(body)
    assert status == 200 and answer["id"] == "req-1" and answer["model_name"] == name
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["score"]["shape"] == [3] and outputs["score"]["datatype"] == "FP64"
    assert outputs["probabilities"]["shape"] == [3, 2] and len(outputs["probabilities"]["data"]) == 6
    assert outputs["error"]["data"] == ["", "bad_encoding", ""]
    assert outputs["score"]["data"][1] == -1.0
    scored = server.client.score(images)
    assert outputs["score"]["data"][0] == scored[0]["score"] and outputs["score"]["data"][2] == scored[1]["score"]
    status, body, _ = server.request("POST", "/v2/models/other/infer", json.dumps(payload),
                                     {"Content-Type": "application/json"})
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_model"
    status, body, _ = server.request("POST", f"/v2/models/{name}/infer", "[" * 200_000,
                                     {"Content-Type": "application/json"})  # nested past the JSON parser's depth
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
    bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}
    status, body, _ = server.request("POST", f"/v2/models/{name}/infer", json.dumps(bad),
                                     {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"


def test_metrics_exposition_parses_and_counts(served):
    from prometheus_client.parser import text_string_to_metric_families

    server = served["server"]

    def sample(text, name, labels):
        for family in text_string_to_metric_families(text):
            for value in family.samples:
                if value.name == name and all(value.labels.get(k) == v for k, v in labels.items()):
                    return value.value
        return 0.0

    before = server.request("GET", "/metrics")[1].decode()
    image = corpus.jpeg_bytes(corpus.photo(9, 30, 30))
    for _ in range(3):
        assert server.request("POST", "/v1/score", image, {"Content-Type": "image/jpeg"})[0] == 200
    server.client.score([("bad.jpg", b"nope"), ("ok.jpg", image)])
    after = server.request("GET", "/metrics")[1].decode()
    route = {"route": "/v1/score", "status": "200"}
    assert sample(after, "fdcore_requests_total", route) - sample(before, "fdcore_requests_total", route) == 4
    scored = {"outcome": "scored"}
    assert sample(after, "fdcore_images_total", scored) - sample(before, "fdcore_images_total", scored) == 4
    bad = {"outcome": "not_an_image"}
    assert sample(after, "fdcore_images_total", bad) - sample(before, "fdcore_images_total", bad) == 1
    assert sample(after, "fdcore_ready", {}) == 1.0
    assert sample(after, "fdcore_batch_size_count", {}) > sample(before, "fdcore_batch_size_count", {})


def test_a_full_queue_answers_429_with_retry_after_then_a_drain_finishes_in_flight_work(served, tmp_path):
    # each batch is held 3 s: two images fill the queue, a third is refused, SIGTERM then drains
    server = Server(served["ensemble"], "--max-queue", "2", "--access-log", str(tmp_path / "access.jsonl"),
                    tmp_path=tmp_path, env={"FDCORE_SERVE_TEST_BATCH_DELAY": "3"})
    try:
        image = corpus.jpeg_bytes(corpus.photo(10, 30, 30))
        answers = []
        slow = threading.Thread(target=lambda: answers.append(server.client.score([("a.jpg", image), ("b.jpg", image)])))
        slow.start()
        deadline = time.monotonic() + 10
        while b"fdcore_images_in_service 2.0" not in server.request("GET", "/metrics", key=None)[1]:
            assert time.monotonic() < deadline, "the two images never reached the queue"
            time.sleep(0.05)
        status, body, response = server.request("POST", "/v1/score", image, {"Content-Type": "image/jpeg"}, key=None)
        assert status == 429 and json.loads(body)["error"]["code"] == "overloaded"
        assert int(response.getheader("Retry-After")) >= 1
        server.process.send_signal(signal.SIGTERM)  # while a.jpg and b.jpg wait in the queue
        time.sleep(0.3)
        assert not server.client.ready()
        slow.join(30)
        assert [result["error"] for result in answers[0]] == [None, None]
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    log = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
    assert {"request_id", "images", "outcomes", "latency_ms", "status"} <= set(log[0])
    assert any(entry["status"] == 429 and entry["code"] == "overloaded" for entry in log)
    assert any(entry["status"] == 200 and entry["outcomes"] == {"scored": 2} for entry in log)


def test_refuses_to_expose_an_unauthenticated_service_and_bad_key_files(served, tmp_path):
    result = fdcore_command("serve", "--ensemble", str(served["ensemble"]), "--host", "0.0.0.0", timeout=60)
    assert result.returncode == 2 and "--api-key-file" in result.stderr and "Traceback" not in result.stderr
    weak = tmp_path / "weak.txt"
    weak.write_text("short\n")
    result = fdcore_command("serve", "--ensemble", str(served["ensemble"]), "--api-key-file", str(weak), timeout=60)
    assert result.returncode == 2 and "key 1" in result.stderr
    result = fdcore_command("serve", "--ensemble", str(served["ensemble"]), "--access-log",
                            str(tmp_path / "missing" / "access.jsonl"), "--port", str(free_port()), timeout=60)
    assert result.returncode == 2 and "--access-log" in result.stderr and "Traceback" not in result.stderr
    result = fdcore_command("serve", "--ensemble", str(served["ensemble"]), "--aggregator", "rank-mean",
                            "--port", str(free_port()), timeout=120)
    assert result.returncode == 2 and "rank-mean" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_decoding_process_costs_its_images_not_the_service(served, tmp_path):
    server = Server(served["ensemble"], tmp_path=tmp_path)
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        assert children, "the decoding processes are children of the server"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        image = corpus.jpeg_bytes(corpus.photo(11, 30, 30))
        time.sleep(0.5)
        first = server.client.score([("a.jpg", image)])[0]
        assert first["error"] in (None, "worker_failed")
        again = server.client.score([("b.jpg", image), ("c.jpg", image)])
        assert [result["error"] for result in again] == [None, None]
        assert server.client.ready()
    finally:
        assert server.stop() == 0
