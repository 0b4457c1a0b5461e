"""``cifarflow serve``: KServe's own model server (the one KServe runs for custom predictors) around the model.

It speaks the V2 Open Inference Protocol over REST: ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}`` (metadata, plus the class names as ``parameters``) and ``/v2/models/{name}/infer``.
On top of kserve's server:

- requests are bounded (``max_request_bytes``: 413 before the body is read; ``max_batch`` images);
- every bad request is a 4xx with ``{"error": "..."}`` (kserve's ``InvalidInput``), a body that is not JSON too;
- inference runs in a worker thread, so health checks answer while a large batch runs;
- SIGTERM stops accepting connections and lets requests in flight finish (uvicorn's graceful shutdown, up to
  ``grace_s``), which is what a Kubernetes rollout needs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifarflow.serve.classifier import INPUT, OUTPUTS, BadTensor, Classifier

log = logging.getLogger(__name__)

# kserve.model_server parses sys.argv with argparse when imported (abbreviations included: `--model X` would
# be taken as its --model_name): hide cifarflow's own arguments from it.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput, ModelNotFound
    from kserve.model_server import app as kserve_app
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
finally:
    sys.argv = _argv

DEFAULT_NAME = "cifarflow"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class ServeOptions:
    name: str = DEFAULT_NAME
    port: int = DEFAULT_PORT
    max_batch: int = 1024
    # A batch of 1024 images as JSON numbers is about 12 MB; base64 photos are smaller.
    max_request_bytes: int = 32 << 20
    grace_s: int = 30


class CifarModel(kserve.Model):
    """A kserve model whose ``predict`` takes V2 image tensors and answers probabilities and class ids."""

    def __init__(self, name: str, classifier: Classifier) -> None:
        super().__init__(name)
        self.classifier = classifier
        self.ready = True

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT, "datatype": "UINT8", "shape": self.classifier.info.input_shape}]

    def get_output_types(self) -> list[dict[str, Any]]:
        classes = len(self.classifier.info.class_names)
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "class_id", "datatype": "INT32", "shape": [-1]},
            {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
        ]

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, *_: Any
    ) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput('send a V2 inference request: {"inputs": [{"name": ..., ...}]}')
        images = self._images(payload)
        # TensorFlow releases the GIL: the event loop keeps answering health checks meanwhile.
        probabilities, ids = await asyncio.get_running_loop().run_in_executor(
            None, self.classifier.predict, images
        )
        names = self.classifier.info.class_names
        outputs = {
            "probabilities": InferOutput(
                "probabilities", list(probabilities.shape), "FP32", probabilities.tolist()
            ),
            "class_id": InferOutput("class_id", [len(ids)], "INT32", ids.tolist()),
            "class_name": InferOutput("class_name", [len(ids)], "BYTES", [names[i] for i in ids]),
        }
        wanted = [o.name for o in payload.request_outputs or []] or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}: this model answers {list(OUTPUTS)}")
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[outputs[n] for n in wanted],
        )

    def _images(self, payload: InferRequest) -> np.ndarray:
        if len(payload.inputs) != 1:
            raise InvalidInput(f"send exactly one input tensor ({INPUT!r}), got {len(payload.inputs)}")
        tensor = payload.inputs[0]
        try:
            if tensor.datatype == "UINT8":
                return self.classifier.images_from_uint8(list(tensor.shape), tensor.data)
            if tensor.datatype == "BYTES":
                return self.classifier.images_from_bytes(list(tensor.shape), tensor.data)
        except BadTensor as exc:
            raise InvalidInput(f"input {tensor.name!r}: {exc}") from None
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype}: send UINT8 [N, H, W, 3] images or BYTES "
            "(base64 PNG/JPEG)"
        )


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 without being read whole."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # Chunked: read it here, up to the limit, then hand the app what was read.
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> dict[str, Any]:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        mb = self.limit / (1 << 20)
        response = JSONResponse(
            {"error": f"the request body exceeds the server's limit of {mb:g} MiB: send fewer images"},
            status_code=413,
        )
        await response(scope, receive, send)


async def _not_json(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = (exc.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and not isinstance(p, int))
    detail = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
    return JSONResponse({"error": f"the request is not a V2 inference request ({detail})"}, status_code=400)


def _add_metadata_route(app: FastAPI, server: Any, model: CifarModel) -> None:
    """V2 model metadata plus ``parameters`` (class names, image size): routes added first win in FastAPI."""

    async def metadata(model_name: str) -> dict[str, Any]:
        answer: dict[str, Any] = await server.dataplane.model_metadata(model_name)
        info = model.classifier.info
        answer["parameters"] = {"class_names": info.class_names, "image_shape": info.input_shape[1:]}
        return answer

    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])


class _QuietClientErrors(logging.Filter):
    """kserve logs a traceback for every rejected request; a client's mistake is not the server's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InvalidInput | ModelNotFound):
            record.exc_info, record.exc_text = None, None
        return True


def serve(classifier: Classifier, options: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT; returns after in-flight requests finished."""
    logging.getLogger("kserve").addFilter(_QuietClientErrors())
    model = CifarModel(options.name, classifier)
    server = kserve.ModelServer(
        http_port=options.port, enable_grpc=False, grace_period=options.grace_s, enable_docs_url=False
    )
    kserve_app.add_middleware(BodyLimit, limit=options.max_request_bytes)
    kserve_app.add_exception_handler(RequestValidationError, _not_json)
    _add_metadata_route(kserve_app, server, model)
    log.info(
        "serving %s as model %r on port %d (V2 REST: /v2/models/%s/infer)",
        classifier.info.url, options.name, options.port, options.name,
    )  # fmt: skip
    server.start([model])
    log.info("stopped")
