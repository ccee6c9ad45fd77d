"""A TEST DOUBLE of TensorFlow Serving, for the client tests only (never part of the product).

No TF Serving binary can be installed on this project's machines (BUILD_NOTES.md), so the clients
are tested against this stand-in: it speaks TF Serving's gRPC PredictionService (Predict,
GetModelMetadata, from tensorflow-serving-api's generated servicer) and its REST API
(POST /v1/models/NAME[/versions/N]:predict with columnar "inputs", binary strings as {"b64": ...},
GET .../metadata), and answers
from the SavedModel loaded the way TF Serving loads it (tests/serving_loader.py: TF1 Session,
signatures by tensor name). Errors follow TF Serving's codes: NOT_FOUND for an unknown model or
version, INVALID_ARGUMENT (HTTP 400) with the graph's message for a refused request, UNAVAILABLE
(HTTP 503) for the first `fail_first` calls when asked to, and `delay_s` before each answer.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from tests.serving_loader import ServedModel


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):   # a client that gave up
            super().handle_error(request, client_address)


def _b64_decoded(value):
    """TF Serving's REST API carries binary strings as {"b64": BASE64}: decode them back to bytes."""
    if isinstance(value, list):
        return [_b64_decoded(v) for v in value]
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value


class ServingDouble:
    def __init__(self, saved_model_dir: str, model_name: str, version: int):
        self.model = ServedModel(saved_model_dir)
        self.name, self.version = model_name, version
        self.fail_first, self.delay_s, self.calls = 0, 0.0, 0
        self._lock = threading.Lock()
        self._grpc = self._http = None

    # ----------------------------------------------------------------- shared behaviour
    def _gate(self):
        """(code, message) when this call must fail before reaching the model, else None."""
        with self._lock:
            self.calls += 1
            failing = self.calls <= self.fail_first
        time.sleep(self.delay_s)
        return ("UNAVAILABLE", "the double is told to be unavailable") if failing else None

    def _find(self, name: str, version: int | None):
        if name != self.name or version not in (None, self.version):
            return ("NOT_FOUND", f"Servable not found for request: {'Latest' if version is None else 'Specific'}"
                                 f"({name}{'' if version is None else f', {version}'})")
        return None

    def _predict(self, signature: str, inputs: dict) -> dict:
        if signature not in self.model.signatures:
            raise KeyError(f'Serving signature key "{signature}" not found.')
        return self.model.run(signature, **inputs)

    def _signature_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        m = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.model.signatures.items():
            m.signature_def[k].CopyFrom(v)
        return m

    # ----------------------------------------------------------------- gRPC
    def _servicer(self):
        double = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def _check(self, spec, context):
                for failure in (double._gate(), double._find(spec.name, spec.version.value
                                                             if spec.HasField("version") else None)):
                    if failure:
                        context.abort(getattr(grpc.StatusCode, failure[0]), failure[1])

            def Predict(self, request, context):
                self._check(request.model_spec, context)
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                try:
                    out = double._predict(request.model_spec.signature_name or "serving_default", inputs)
                except tf.errors.InvalidArgumentError as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
                except KeyError as e:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
                resp = predict_pb2.PredictResponse()
                resp.model_spec.CopyFrom(request.model_spec)
                for k, v in out.items():
                    resp.outputs[k].CopyFrom(tf.make_tensor_proto(v))
                return resp

            def GetModelMetadata(self, request, context):
                self._check(request.model_spec, context)
                resp = get_model_metadata_pb2.GetModelMetadataResponse()
                resp.model_spec.CopyFrom(request.model_spec)
                resp.metadata["signature_def"].Pack(double._signature_map())
                return resp

        return Servicer()

    # ----------------------------------------------------------------- REST
    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, suffix: str):
                path = self.path
                if not path.startswith("/v1/models/") or not path.endswith(suffix):
                    return None
                parts = path[len("/v1/models/"):-len(suffix)].split("/versions/")
                return parts[0], (int(parts[1]) if len(parts) > 1 else None)

            def _gate_and_find(self, route):
                failure = double._gate() or double._find(*route)
                if failure:
                    self._reply({"UNAVAILABLE": 503, "NOT_FOUND": 404}[failure[0]], {"error": failure[1]})
                    return False
                return True

            def do_GET(self):
                route = self._route("/metadata")
                if route is None:
                    return self._reply(404, {"error": f"Malformed request: GET {self.path}"})
                if self._gate_and_find(route):
                    sigs = json_format.MessageToDict(double._signature_map(), preserving_proto_field_name=True)
                    self._reply(200, {"model_spec": {"name": route[0]}, "metadata": {"signature_def": sigs}})

            def do_POST(self):
                route = self._route(":predict")
                if route is None:
                    return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._gate_and_find(route):
                    return
                signature = body.get("signature_name", "serving_default")
                sig = double.model.signatures.get(signature)
                if sig is None:
                    return self._reply(400, {"error": f'Serving signature key "{signature}" not found.'})
                dtypes = {k: tf.dtypes.as_dtype(v.dtype).as_numpy_dtype for k, v in sig.inputs.items()}
                inputs = {k: np.asarray(_b64_decoded(v), dtype=dtypes.get(k, np.float32))
                          for k, v in body["inputs"].items()}
                try:
                    out = double._predict(signature, inputs)
                except tf.errors.InvalidArgumentError as e:
                    return self._reply(400, {"error": e.message})
                self._reply(200, {"outputs": {k: np.char.decode(v.astype(bytes)).tolist() if v.dtype.kind in "SO"
                                              else v.tolist() for k, v in out.items()}})

        return Handler

    # ----------------------------------------------------------------- life cycle
    def start(self) -> tuple[str, str]:
        """Start both servers on free local ports; returns (grpc address, REST base URL)."""
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self._servicer(), self._grpc)
        grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self._http = _QuietServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{self._http.server_address[1]}"

    def stop(self):
        if self._grpc:
            self._grpc.stop(0)
        if self._http:
            self._http.shutdown()
        self.model.close()
