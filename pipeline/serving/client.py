"""Clients of a running TensorFlow Serving: gRPC (PredictionService) and REST (/v1/models/...:predict).

    client = connect("grpc://localhost:8500", "fat_tagger")      # or "http://localhost:8501"
    client.check_signature("serving_waveform", ["waveform", "length"])
    scores = client.predict("serving_waveform", {"waveform": w, "length": n})["scores"]

Both speak TF Serving's documented APIs (the gRPC protos of tensorflow-serving-api; the REST
predict API's columnar "inputs"/"outputs" JSON, binary strings such as serialized tf.Examples or
WAV files as {"b64": ...} objects). Calls have a timeout; UNAVAILABLE (the server
starting, restarting or overloaded) is retried with exponential back-off; every other failure
raises ServingError with what went wrong in words: unreachable server, unknown model or version,
unknown signature or input, a request the model refused (its INVALID_ARGUMENT message), timeout.
"""
from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import numpy as np

from pipeline import saved_model_layout as layout

log = logging.getLogger(__name__)


class ServingError(RuntimeError):
    """A request that cannot succeed as asked; the message says why. `refused`: the model itself
    rejected the request's content (INVALID_ARGUMENT / HTTP 400), as opposed to the server or the
    connection failing."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class _Client:
    def __init__(self, address: str, model_name: str, version: int | None, timeout_s: float, retries: int,
                 backoff_s: float):
        self.address, self.model_name, self.version = address, model_name, version
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s

    @property
    def model(self) -> str:
        return self.model_name + (f" version {self.version}" if self.version is not None else "")

    def _with_retries(self, call, what: str):
        """call() -> result; _Unavailable is retried with back-off `retries` times."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call()
            except _Unavailable as e:
                if attempt == self.retries:
                    raise ServingError(f"{what}: the server at {self.address} is unavailable after "
                                       f"{self.retries + 1} attempts ({e})") from None
                log.warning("%s: server unavailable (%s); retrying in %.1f s", what, e, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def check_signature(self, signature: str, inputs: list[str]) -> None:
        """Fail early, in words, if the model or the signature or one of its inputs is not there.
        (signatures() leaves out SavedModel internals such as __saved_model_init_op.)"""
        signatures = self.signatures()
        if signature not in signatures:
            raise ServingError(f"model {self.model} has no signature {signature!r}; it has {sorted(signatures)}")
        missing = set(inputs) - set(signatures[signature])
        if missing:
            raise ServingError(f"signature {signature!r} of {self.model} has no inputs {sorted(missing)}; "
                               f"it takes {sorted(signatures[signature])}")


class _Unavailable(Exception):
    pass


class GrpcClient(_Client):
    def __init__(self, target: str, model_name: str, version: int | None = None, timeout_s: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        super().__init__(target, model_name, version, timeout_s, retries, backoff_s)
        opts = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
        self._channel = grpc.insecure_channel(target, options=opts)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _spec(self, spec, signature: str | None = None):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def _call(self, method, request, what: str):
        import grpc

        def once():
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                code, detail = e.code(), e.details()
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise _Unavailable(detail) from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ServingError(f"{what}: no answer from {self.address} within {self.timeout_s:g} s") from None
                if code == grpc.StatusCode.NOT_FOUND:
                    raise ServingError(f"{what}: the server at {self.address} does not serve {self.model}: "
                                       f"{detail}") from None
                raise ServingError(f"{what}: {code.name}: {detail}",
                                   refused=code == grpc.StatusCode.INVALID_ARGUMENT) from None

        return self._with_retries(once, what)

    def signatures(self) -> dict[str, list[str]]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(req.model_spec)
        resp = self._call(self._stub.GetModelMetadata, req, f"metadata of {self.model}")
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig_map)
        return {name: sorted(s.inputs) for name, s in sig_map.signature_def.items() if not name.startswith("__")}

    def predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, signature)
        for name, value in inputs.items():
            req.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        resp = self._call(self._stub.Predict, req, f"{signature} of {self.model}")
        return {name: tf.make_ndarray(t) for name, t in resp.outputs.items()}

    def close(self):
        self._channel.close()


class RestClient(_Client):
    def __init__(self, base_url: str, model_name: str, version: int | None = None, timeout_s: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5):
        super().__init__(base_url.rstrip("/"), model_name, version, timeout_s, retries, backoff_s)

    def _url(self, suffix: str) -> str:
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.address}/v1/models/{self.model_name}{version}{suffix}"

    def _request(self, url: str, body: dict | None, what: str) -> dict:
        def once():
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")
                try:
                    detail = json.loads(text).get("error", text)
                except ValueError:
                    detail = text
                if e.code == 503:
                    raise _Unavailable(detail) from None
                if e.code == 404:
                    raise ServingError(f"{what}: the server at {self.address} does not serve {self.model}: "
                                       f"{detail}") from None
                raise ServingError(f"{what}: HTTP {e.code}: {detail}", refused=e.code == 400) from None
            except (TimeoutError, urllib.error.URLError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                    raise ServingError(f"{what}: no answer from {self.address} within {self.timeout_s:g} s") from None
                raise _Unavailable(str(reason)) from None

        return self._with_retries(once, what)

    def signatures(self) -> dict[str, list[str]]:
        meta = self._request(self._url("/metadata"), None, f"metadata of {self.model}")
        defs = meta.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        return {name: sorted(s.get("inputs", {})) for name, s in defs.items() if not name.startswith("__")}

    def predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = {"signature_name": signature, "inputs": {k: _json_value(v) for k, v in inputs.items()}}
        out = self._request(self._url(":predict"), body, f"{signature} of {self.model}")["outputs"]
        if not isinstance(out, dict):   # a single output comes back bare
            out = {layout.SCORES: out}
        return {k: np.asarray(v) if _strings(v) else np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def close(self):
        pass


def _json_value(value):
    """An input as TF Serving's REST API takes it: numbers as nested lists, bytes as {"b64": ...}
    (JSON has no binary strings; TF Serving decodes these objects into DT_STRING values)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "SOU":
        return arr.tolist()

    def encode(x):
        if isinstance(x, list):
            return [encode(v) for v in x]
        if isinstance(x, bytes):
            return {"b64": base64.b64encode(x).decode("ascii")}
        return x

    return encode(arr.tolist())


def _strings(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str)


def connect(server: str, model_name: str, version: int | None = None, **kwargs) -> _Client:
    """grpc://HOST:PORT (TF Serving's --port, 8500) or http(s)://HOST:PORT (--rest_api_port, 8501)."""
    url = urlparse(server)
    if url.scheme == "grpc" and url.netloc:
        return GrpcClient(url.netloc, model_name, version, **kwargs)
    if url.scheme in ("http", "https") and url.netloc:
        return RestClient(server, model_name, version, **kwargs)
    raise ServingError(f"--server {server!r}: expected grpc://HOST:PORT or http://HOST:PORT")
