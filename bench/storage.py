"""Object storage: transfer throughput and a replica's cold start, side by side.

    .venv/bin/python bench/storage.py                 # 1 GB object, 2 rounds, ~4 minutes
    .venv/bin/python bench/storage.py --size-mb 256   # quicker

Against a real S3-compatible server (SeaweedFS's `weed server -s3`, built from Go
modules by e2e/cluster/build.sh) on loopback, started here:

  transfer    one object of `--size-mb` random bytes, uploaded and downloaded by
              (a) the runtime's objectstore (boto3's transfer manager: parallel multipart
              upload, parallel ranged GETs, the client the pods use) and (b) a plain
              single-stream client (one PUT of the whole file, one GET read in 1 MiB
              blocks) — the same boto3 client settings, so the difference is the transfer
              manager. (c) obstore (Rust's object_store from Python: its multipart
              `put` with 12 concurrent parts, its streaming `get`), the alternative
              library considered. The variants rotate within each round; each download
              is checked against the file's sha256 outside the timing.
  cold start  a fresh process builds a serving replica's Predictor (imports, load, the
              digest check, the start-up self-check) from (a) a claim (pvc://, a local
              folder) and (b) object storage (s3://, an empty pod cache: download, verify,
              load), and (c) s3:// again with the cache already filled (a second replica
              on the same pod). Reported: the Predictor's construction time in that
              process, excluding the interpreter's imports, which are the same for all.

Loopback on a shared 2-core machine: the server and the client share the CPUs, so the
absolute figures are this machine's; the ratios are what the comparison says.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import obstore  # noqa: E402

from modelplane_harness.s3 import S3Server, build_weed  # noqa: E402
from modelplane_runtime import objectstore  # noqa: E402

BLOCK = 1 << 20


def say(message: str) -> None:
    print(f"[storage] {message}", file=sys.stderr, flush=True)


def _random_file(path: Path, size_mb: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(size_mb):
            block = os.urandom(BLOCK)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _timed(action: Any) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def transfer(bucket: str, folder: Path, size_mb: int, rounds: int) -> dict[str, Any]:
    source = folder / "source.bin"
    say(f"writing {size_mb} MB of random bytes")
    expected = _random_file(source, size_mb)
    client = objectstore.client()
    variants = ("manager", "single", "obstore")
    seconds: dict[str, list[float]] = {
        f"{way} {variant}": [] for way in ("upload", "download") for variant in variants
    }
    store = _obstore(bucket)

    def single_upload(key: str) -> None:
        with source.open("rb") as handle:
            client.put_object(Bucket=bucket, Key=key, Body=handle)

    def single_download(key: str, target: Path) -> None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with target.open("wb") as handle:
            for block in iter(lambda: body.read(BLOCK), b""):
                handle.write(block)

    for round_ in range(1, rounds + 1):
        shift = (round_ - 1) % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            key = f"bench/{variant}-{round_}.bin"
            uri = objectstore.parse(f"s3://{bucket}/{key}", field="bench")
            target = folder / f"{variant}.bin"
            if variant == "manager":
                up = _timed(partial(objectstore.upload_file, source, uri, field="bench"))
                down = _timed(partial(objectstore.download_file, uri, target, field="bench"))
            elif variant == "single":
                up = _timed(partial(single_upload, key))
                down = _timed(partial(single_download, key, target))
            else:
                up = _timed(partial(obstore.put, store, key, source))
                down = _timed(partial(_obstore_download, store, key, target))
            if _sha256(target) != expected:
                raise SystemExit(f"{variant}: the downloaded object differs from the file")
            target.unlink()
            client.delete_object(Bucket=bucket, Key=key)
            seconds[f"upload {variant}"].append(up)
            seconds[f"download {variant}"].append(down)
            say(
                f"round {round_} {variant}: up {size_mb / up:.0f} MB/s, "
                f"down {size_mb / down:.0f} MB/s"
            )
    source.unlink()
    rates = {k: size_mb / statistics.median(v) for k, v in seconds.items()}
    return {"size_mb": size_mb, "rounds": rounds, "seconds": seconds, "mb_per_s": rates}


def _obstore(bucket: str) -> Any:
    """obstore's S3 client for `bucket`, from the same AWS_* environment."""
    from obstore.store import S3Store  # noqa: PLC0415

    return S3Store(
        bucket,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        client_options={"allow_http": True},
    )


def _obstore_download(store: Any, key: str, target: Path) -> None:
    with target.open("wb") as handle:
        for chunk in obstore.get(store, key).stream(min_chunk_size=8 * BLOCK):
            handle.write(chunk)


_REPLICA = """
import json, sys, time
from modelplane_runtime.contract import ServeArgs
from modelplane_runtime.serve.predictor import Predictor
began = time.perf_counter()
Predictor(ServeArgs(model_name="bench", model_uri=sys.argv[1], expected_digest=sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - began}))
"""


def _replica_start(uri: str, digest: str, env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _REPLICA, uri, digest],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"replica from {uri} failed:\n{result.stderr[-3000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def cold_start(bucket: str, folder: Path, rounds: int) -> dict[str, Any]:
    from serving import train  # noqa: PLC0415

    say("training the model the replicas serve (bench/serving.py's)")
    artifact, digest = train(folder / "claim" / "models")
    size_mb = sum(p.stat().st_size for p in artifact.iterdir() if p.is_file()) / 1e6
    prefix = objectstore.parse(f"s3://{bucket}/models/bench", field="bench")
    objectstore.upload_tree(artifact, prefix, field="bench")
    claim_env = {"MODELPLANE_PVC_ROOT": str(folder / "claim")}
    seconds: dict[str, list[float]] = {"claim": [], "s3 cold cache": [], "s3 warm cache": []}
    for round_ in range(1, rounds + 1):
        cache = folder / f"cache-{round_}"
        s3_env = {"MODELPLANE_STORAGE_CACHE": str(cache)}
        seconds["claim"].append(_replica_start("pvc://models/bench", digest, claim_env))
        seconds["s3 cold cache"].append(_replica_start(str(prefix), digest, s3_env))
        seconds["s3 warm cache"].append(_replica_start(str(prefix), digest, s3_env))
        shutil.rmtree(cache)
        say(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    return {"artifact_mb": size_mb, "rounds": rounds, "seconds": seconds, "median_s": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--start-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="modelplane-bench-storage-"))
    try:
        with S3Server(build_weed(), data_dir=folder / "s3") as server:
            os.environ.update(server.env())
            bucket = server.fresh_bucket("bench")
            moved = transfer(bucket, folder, args.size_mb, args.rounds)
            started = cold_start(bucket, folder, args.start_rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rates = moved["mb_per_s"]
    medians = started["median_s"]
    print(f"\n{moved['size_mb']} MB object, median of {moved['rounds']} round(s), MB/s:")
    print("| | boto3 transfer manager | single stream | obstore | manager / single |")
    print("|---|---|---|---|---|")
    for way in ("upload", "download"):
        manager, single = rates[f"{way} manager"], rates[f"{way} single"]
        other = rates[f"{way} obstore"]
        print(
            f"| {way} | {manager:.0f} | {single:.0f} | {other:.0f} | **{manager / single:.2f}** |"
        )
    print(
        f"\nreplica start ({started['artifact_mb']:.1f} MB artifact), "
        f"median of {started['rounds']}, seconds:"
    )
    print("| from | seconds | vs claim |")
    print("|---|---|---|")
    for way, value in medians.items():
        print(f"| {way} | {value:.2f} | {value / medians['claim']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"transfer": moved, "cold_start": started}, indent=2))


if __name__ == "__main__":
    main()
