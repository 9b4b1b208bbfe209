"""The pod template the operator generates really trains: run it as the kubelet would.

The test plays the kubelet for two pods of the Job: it takes the container's command and
environment from the Job the operator created, mounts the claim and the downwardAPI
volume (the run config, from the annotation the Job controller copied onto the pod) as
folders, expands $(VAR) references as Kubernetes does, and starts both "pods" as local
processes (torchrun, Gloo, CPU). Only what a kubelet supplies is substituted: the
completion index, the mount points, and MASTER_ADDR (pod 0's DNS name exists only inside
a cluster, so it points at this machine).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from modelplane_harness.cluster import LocalCluster, free_port
from modelplane_harness.operator import OperatorProcess
from modelplane_harness.waiting import wait_for
from modelplane_runtime.contract import TrainingResult
from tests.factories import make_training

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def pod_field(metadata: dict[str, Any], path: str) -> str:
    """What the kubelet writes for a downwardAPI item's `metadata.annotations['key']` or
    `metadata.labels['key']`; any other field fails the test."""
    match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    assert match, f"the test does not play the kubelet for {path}"
    return str(metadata[match.group(1)][match.group(2)])


def test_the_generated_pod_template_trains_as_two_gloo_processes(
    operator: OperatorProcess,
    crds: LocalCluster,
    namespace: str,
    models_pvc: str,
    tmp_path: Path,
) -> None:
    resource = make_training(
        {
            "spec.resources": {"nodes": 2, "gpusPerNode": 0},
            "spec.hyperparameters": {"epochs": 2, "batchSize": 32, "learningRate": 0.003},
            "spec.output.uri": "pvc://models/contract",
        },
        name="contract",
    )
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(resource))
    job = json.loads(
        wait_for(
            lambda: (
                crds.kubectl(
                    "get", "job", "contract-train", "-n", namespace, "-o", "json", check=False
                ).stdout
            ),
            what="the job",
        )
    )
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The pods' own metadata, as the kubelet reads it for a downwardAPI volume.
    pod_metadata = wait_for(
        lambda: next(
            iter(crds.get_json("pods", "-n", namespace, "-l", "job-name=contract-train")["items"]),
            None,
        ),
        what="a pod of the job",
    )["metadata"]

    # The volumes, as folders: each downwardAPI item is a file holding the field of the
    # pod it names, each claim a directory.
    mounts: dict[str, Path] = {}
    for volume in pod["volumes"]:
        folder = tmp_path / volume["name"]
        folder.mkdir()
        for item in volume.get("downwardAPI", {}).get("items", []):
            (folder / item["path"]).write_text(
                pod_field(pod_metadata, item["fieldRef"]["fieldPath"])
            )
        mounts[volume["name"]] = folder
    mount_paths = {m["mountPath"]: mounts[m["name"]] for m in container["volumeMounts"]}
    pvc_root = tmp_path / "pvc"
    for path, folder in mount_paths.items():
        if path.startswith("/mnt/pvc/"):
            pvc_root.mkdir(exist_ok=True)
            (pvc_root / path.removeprefix("/mnt/pvc/")).symlink_to(folder)

    def remap(arg: str) -> str:
        for path, folder in mount_paths.items():
            if arg.startswith(path + "/") or arg == path:
                return str(folder) + arg[len(path) :]
        return arg

    base_env = {e["name"]: e["value"] for e in container["env"]}
    port = str(free_port())
    processes = []
    for index in range(job["spec"]["completions"]):
        env = {
            **base_env,
            "JOB_COMPLETION_INDEX": str(index),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "MODELPLANE_PVC_ROOT": str(pvc_root),
            "MODELPLANE_TERMINATION_LOG": str(tmp_path / f"termination-{index}"),
        }
        command = [remap(expand(arg, env)) for arg in container["command"]]
        processes.append(
            subprocess.Popen(
                command,
                env={
                    **os.environ,
                    **env,
                    "OMP_NUM_THREADS": "1",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[-3000:] for o in outputs]

    artifact = mount_paths["/mnt/pvc/models"] / "contract" / "contract"
    card = json.loads((artifact / "model_card.json").read_text())
    assert card["run_config"]["name"] == "contract"
    result = TrainingResult.model_validate_json((tmp_path / "termination-0").read_text())
    assert result.artifact_uri == "pvc://models/contract/contract"
    assert result.metrics["accuracy"] > 0.8
    assert result.digest == card["digest"]
