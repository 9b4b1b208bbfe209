"""What a real node costs, side by side with kwok's simulated one.

Measures, in one run:
- the operator and runtime images: build time (cached layers are reused, so a second run
  measures the cached path) and size;
- a cluster's start with kwok's nodes and with one real node, and the runtime image's
  import into the node's containerd (0 s when it already holds it);
- a pod of the runtime image, apply -> Running, on kwok and on the real node;
- the quickstart ModelTraining (two ranks) with the chart's operator pod on the real node:
  apply -> first training pod Running, and apply -> Succeeded.

Ratios are real / kwok: what running pods for real adds over simulating them.

    .venv/bin/python bench/realnode.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from modelplane_harness.cluster import LocalCluster, build_binaries, eprint, repo_root
from modelplane_harness.images import BuiltImage, build_images, import_image
from modelplane_harness.operator import OPERATOR_NAMESPACE, RELEASE, install_chart
from modelplane_harness.waiting import wait_for


def timed_images() -> tuple[list[BuiltImage], float]:
    began = time.monotonic()
    images = build_images(["operator", "runtime"])
    return images, time.monotonic() - began


def runtime_pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                }
            ],
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
        },
    }


def pod_running_s(cluster: LocalCluster, image: str) -> float:
    began = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(runtime_pod(image)))
    wait_for(
        lambda: cluster.get_json("pod", "probe").get("status", {}).get("phase") == "Running",
        timeout=120,
        what="the probe pod Running",
    )
    elapsed = time.monotonic() - began
    cluster.kubectl("delete", "pod", "probe", "--wait=false")
    return elapsed


def quickstart_s(cluster: LocalCluster) -> tuple[float, float]:
    """Seconds from applying the quickstart to its first pod Running, and to Succeeded."""
    examples = repo_root() / "examples"
    cluster.kubectl("apply", "-f", str(examples / "cluster" / "models-pvc.yaml"))
    began = time.monotonic()
    cluster.kubectl("apply", "-f", str(examples / "quickstart-training.yaml"))
    wait_for(
        lambda: any(
            p["status"].get("phase") == "Running"
            for p in cluster.get_json("pods", "-l", "modelplane.io/training=quickstart")["items"]
        ),
        timeout=300,
        what="a training pod Running",
    )
    running = time.monotonic() - began
    wait_for(
        lambda: cluster.get_json("mt", "quickstart").get("status", {}).get("phase") == "Succeeded",
        timeout=900,
        what="the quickstart Succeeded",
    )
    return running, time.monotonic() - began


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mp-bench-node-"))
    binaries = build_binaries()
    images, build_s = timed_images()
    runtime = next(i for i in images if "runtime" in i.ref)
    results: dict[str, Any] = {
        "images_build_s": round(build_s, 1),
        "images": {i.ref: round(i.size / 1e9, 2) for i in images},
    }
    kwok = LocalCluster(work / "kwok", binaries)
    try:
        results["kwok_start_s"] = round(kwok.start(log=eprint), 1)
        results["kwok_pod_running_s"] = round(pod_running_s(kwok, runtime.ref), 2)
    finally:
        kwok.stop()
    real = LocalCluster(work / "real", binaries, real_node=True)
    try:
        results["real_start_s"] = round(real.start(log=eprint), 1)
        assert real.node is not None
        began = time.monotonic()
        for image in images:
            import_image(image, containerd_address=real.node.containerd_address)
        results["real_import_s"] = round(time.monotonic() - began, 1)
        results["real_pod_running_s"] = round(pod_running_s(real, runtime.ref), 2)
        install_chart(real)
        real.kubectl(
            "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}-operator",
            "--timeout=180s",
        )  # fmt: skip
        running, succeeded = quickstart_s(real)
        results["quickstart_pod_running_s"] = round(running, 1)
        results["quickstart_succeeded_s"] = round(succeeded, 1)
    finally:
        real.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["ratio_start_real_over_kwok"] = round(
        results["real_start_s"] / results["kwok_start_s"], 2
    )
    results["ratio_pod_running_real_over_kwok"] = round(
        results["real_pod_running_s"] / results["kwok_pod_running_s"], 2
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
