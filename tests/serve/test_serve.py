"""`cifarflow serve` over real HTTP: KServe's V2 protocol, the model's own answers, bad requests, SIGTERM."""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cifarflow.storage import Store
from cifarflow.train import export, source
from train.conftest import SIZED_CLASSES, SIZED_SIDE, sized_dataset, sized_model  # noqa: F401

from .conftest import MODEL_NAME, Server, start_server

tf = pytest.importorskip("tensorflow")

CLASSES = [f"class{i}" for i in range(10)]


def uint8_request(images: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": list(images.shape),
        "data": images.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def bytes_request(*encoded: bytes) -> dict[str, Any]:
    data = [base64.b64encode(e).decode() for e in encoded]
    return {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(data)], "data": data}]}


def outputs(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o for o in answer.json()["outputs"]}


@pytest.fixture(scope="module")
def test_split(tiny_dataset: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*source.open_source(Store(), tiny_dataset).chunks("test"), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def test_health_and_metadata(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2/models/{MODEL_NAME}").json()
    assert meta["name"] == MODEL_NAME
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "probabilities": ("FP32", [-1, 10]),
        "class_id": ("INT32", [-1]),
        "class_name": ("BYTES", [-1]),
    }
    assert meta["parameters"] == {"class_names": CLASSES, "image_shape": [32, 32, 3]}
    assert httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready").json()["ready"] is True


def test_metadata_and_requests_follow_the_model_image_size(sized_model: str, tmp_path: Path) -> None:  # noqa: F811
    """A model trained on 96 px images of 5 classes: the server reads the size from the SavedModel's signature,
    reports it, takes that size and refuses CIFAR's."""
    srv = start_server(sized_model, tmp_path, "serve-96")
    try:
        meta = httpx.get(f"{srv.url}/v2/models/{MODEL_NAME}").json()
        shape = [SIZED_SIDE, SIZED_SIDE, 3]
        assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, *shape]}]
        assert ("probabilities", [-1, 5]) in [(o["name"], o["shape"]) for o in meta["outputs"]]
        assert meta["parameters"] == {"class_names": SIZED_CLASSES, "image_shape": shape}
        images = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
        out = outputs(httpx.post(srv.infer_url(), json=uint8_request(images), timeout=60))
        assert out["probabilities"]["shape"] == [2, 5] and set(out["class_name"]["data"]) <= set(
            SIZED_CLASSES
        )
        cifar = httpx.post(srv.infer_url(), json=uint8_request(images[:, :32, :32]), timeout=60)
        assert cifar.status_code == 400 and "is not [N, 96, 96, 3]" in cifar.text
    finally:
        srv.proc.kill()


def test_answers_what_the_saved_model_answers(
    server: Server, small_model: str, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    """Every held-out image through HTTP in batches of 64: the SavedModel's own probabilities and classes,
    and the accuracy `cifarflow evaluate` recorded."""
    images, labels = test_split
    served_p, served_ids, served_names = [], [], []
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(images), 64):
            out = outputs(client.post(server.infer_url(), json=uint8_request(images[start : start + 64])))
            assert out["probabilities"]["shape"] == [len(images[start : start + 64]), 10]
            served_p.append(np.asarray(out["probabilities"]["data"], np.float32).reshape(-1, 10))
            served_ids.extend(out["class_id"]["data"])
            served_names.extend(out["class_name"]["data"])
    probabilities = np.concatenate(served_p)
    with export.downloaded(Store(), small_model) as local:
        fn = export.load_signature(local)
        expected = fn(images=tf.constant(images))
    np.testing.assert_allclose(probabilities, expected["probabilities"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(served_ids, expected["class_id"].numpy())
    assert served_names == [CLASSES[i] for i in served_ids]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    recorded = json.loads((Path(small_model) / "metrics.json").read_text())["test"]["accuracy"]
    assert np.mean(np.asarray(served_ids) == labels) == pytest.approx(recorded)


def test_photos_as_base64_png_and_jpeg(server: Server, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images = test_split[0][:3]
    raw = outputs(httpx.post(server.infer_url(), json=uint8_request(images)))
    png = [tf.io.encode_png(img).numpy() for img in images]
    as_png = outputs(httpx.post(server.infer_url(), json=bytes_request(*png)))
    assert as_png["class_id"]["data"] == raw["class_id"]["data"]  # PNG is lossless: the very same pixels
    np.testing.assert_allclose(as_png["probabilities"]["data"], raw["probabilities"]["data"], atol=1e-6)
    photo = tf.io.encode_jpeg(
        tf.image.resize(images[0], (96, 128), method="nearest").numpy().astype(np.uint8)
    )
    out = outputs(httpx.post(server.infer_url(), json=bytes_request(photo.numpy())))
    assert out["probabilities"]["shape"] == [1, 10] and out["class_name"]["data"][0] in CLASSES


def test_asks_for_one_output(server: Server, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    body = uint8_request(test_split[0][:2], outputs=[{"name": "class_id"}])
    assert list(outputs(httpx.post(server.infer_url(), json=body))) == ["class_id"]


IMAGE = np.zeros((1, 32, 32, 3), np.uint8)


def tensor(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "images", "datatype": datatype, "shape": shape, "data": data}]}


BAD = {
    "float dtype": (tensor("FP32", [1, 32, 32, 3], [0.5] * 3072), 400, "datatype FP32"),
    "floats as UINT8": (tensor("UINT8", [1, 32, 32, 3], [0.5] * 3072), 400, "integers 0-255"),
    "out of range": (tensor("UINT8", [1, 32, 32, 3], [256] * 3072), 400, "0-255"),
    "wrong image size": (tensor("UINT8", [1, 28, 28, 3], [0] * 2352), 400, "not [N, 32, 32, 3]"),
    "CHW layout": (tensor("UINT8", [1, 3, 32, 32], [0] * 3072), 400, "not [N, 32, 32, 3]"),
    "data does not fill the shape": (tensor("UINT8", [2, 32, 32, 3], [0] * 3072), 400, "needs 6144"),
    "empty batch": (tensor("UINT8", [0, 32, 32, 3], []), 400, "at least one image"),
    "too many images": (tensor("UINT8", [65, 32, 32, 3], [0] * 65 * 3072), 400, "limit of 64"),
    "two inputs": ({"inputs": [uint8_request(IMAGE)["inputs"][0]] * 2}, 400, "exactly one input"),
    "not base64": (tensor("BYTES", [1], ["%%%"]), 400, "not valid base64"),
    "not an image": (tensor("BYTES", [1], [base64.b64encode(b"hello").decode()]), 400, "not a PNG, JPEG"),
    "unknown output": ({**uint8_request(IMAGE), "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    "inputs not a list": ({"inputs": 5}, 400, "not a V2 inference request"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_4xx_with_a_reason(server: Server, case: str) -> None:
    body, status, reason = BAD[case]
    answer = httpx.post(server.infer_url(), json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]


def test_unknown_model_not_json_and_too_large(server: Server) -> None:
    unknown = httpx.post(server.infer_url("resnet"), json=uint8_request(IMAGE))
    assert unknown.status_code == 404 and "resnet" in unknown.json()["error"]
    garbage = httpx.post(
        server.infer_url(), content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert garbage.status_code == 400 and "not a V2 inference request" in garbage.json()["error"]
    big = httpx.post(
        server.infer_url(), content=b"x" * (3 << 20), headers={"Content-Type": "application/json"}
    )
    assert big.status_code == 413 and "limit of 2 MiB" in big.json()["error"]
    # Chunked, no Content-Length: counted while it streams.
    chunks = (b"x" * (1 << 20) for _ in range(3))
    streamed = httpx.post(server.infer_url(), content=chunks, headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    # The server is fine afterwards, and rejected requests left no traceback in its log.
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert "Traceback" not in server.proc.err()


def test_sigterm_drains_the_request_in_flight(
    small_model: str, tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    srv = start_server(small_model, tmp_path, "drain")
    body = json.dumps(uint8_request(test_split[0][:8])).encode()
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.5)  # the request is being read when the signal comes
        srv.proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # new connections are refused once shutdown begins
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
            except OSError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server still accepts connections after SIGTERM")
        sock.sendall(body[len(body) // 2 :])
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    answer = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert answer["outputs"][0]["shape"] == [8, 10]
    assert srv.proc.wait(timeout=30) == 0, srv.proc.err()[-2000:]


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_a_model_that_is_not_there_is_one_error_line(tmp_path: Path) -> None:
    from train.helpers import start

    proc = start(["serve", "--model", str(tmp_path / "nothing"), "--port", "1"], tmp_path, "missing")
    assert proc.wait(timeout=120) == 2
    assert proc.err().strip().splitlines()[-1].startswith("error: no SavedModel at ")
    assert "Traceback" not in proc.err()
