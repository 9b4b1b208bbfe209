"""The servers bench/serving.py compares the app with, serving the same Predictor.

    python bench/serving_servers.py fastapi --model-uri file:///... --port 8001
    python bench/serving_servers.py kserve  --model-uri file:///... --port 8002

Both answer the same Open Inference Protocol v2 request body on
`/v2/models/bench/infer`, so the load generator sends identical requests everywhere.
- fastapi: a plain FastAPI app on uvicorn; its async route calls the model directly, so
  requests run one at a time (what a first hand-written server does).
- kserve: KServe's Python model server (`kserve.ModelServer`, what a KServe
  InferenceService runs) with a `kserve.Model` whose predict calls the same model.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from modelplane_runtime.contract import ServeArgs
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.serve.predictor import Predictor

NAME = "bench"


def _predictor(uri: str, threads: int) -> Predictor:
    torch.set_num_threads(threads)
    return Predictor(ServeArgs(model_name=NAME, model_uri=uri, threads=threads))


def run_fastapi(uri: str, port: int, threads: int) -> None:
    import uvicorn  # noqa: PLC0415
    from fastapi import FastAPI  # noqa: PLC0415

    predictor = _predictor(uri, threads)
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/bench/infer")
    async def infer(body: dict[str, Any]) -> dict[str, Any]:
        texts = tuple(body["inputs"][0]["data"])
        prediction = predictor.predict(RawData(kind="text", texts=texts))
        return {
            "model_name": NAME,
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(prediction.probabilities.shape),
                    "data": prediction.probabilities.reshape(-1).tolist(),
                }
            ],
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_kserve(uri: str, port: int, threads: int) -> None:
    import kserve  # noqa: PLC0415
    from kserve import InferOutput, InferRequest, InferResponse  # noqa: PLC0415

    predictor = _predictor(uri, threads)

    class BenchModel(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(NAME)
            self.ready = True

        async def predict(
            self, payload: InferRequest, headers: Any = None, response_headers: Any = None
        ) -> InferResponse:
            texts = tuple(str(t) for t in payload.inputs[0].data)
            prediction = predictor.predict(RawData(kind="text", texts=texts))
            output = InferOutput(
                name="probabilities",
                shape=list(prediction.probabilities.shape),
                datatype="FP32",
                data=prediction.probabilities.reshape(-1).tolist(),
            )
            return InferResponse(
                model_name=NAME, infer_outputs=[output], response_id=payload.id or "bench"
            )

    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1)
    server.start([BenchModel()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["fastapi", "kserve"])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses the command line itself
    run = run_fastapi if args.kind == "fastapi" else run_kserve
    run(args.model_uri, args.port, args.threads)


if __name__ == "__main__":
    main()
