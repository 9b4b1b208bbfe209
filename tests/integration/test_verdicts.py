"""`modelplane run` and a cluster give the same verdict on every example.

One rule, two enforcers: for each file under examples/ (and examples/invalid/), the verdict
of `modelplane run --check` is the cluster's. An invalid example is refused by the API
server at apply and by local mode, both naming the field of its `# expect:` line; one in
examples/invalid/judged/ is accepted by the API server and ended by the operator with
InvalidSpec, and refused by local mode, both naming that field; a valid example is
accepted by the API server, not failed by the operator (InvalidSpec), and would run
locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from typer.testing import CliRunner

from modelplane.cli import app
from modelplane_harness.cluster import LocalCluster
from modelplane_harness.operator import OperatorProcess
from modelplane_harness.waiting import wait_for
from modelplane_operator.constants import REASON_INVALID_SPEC
from tests.factories import EXAMPLES, INVALID_EXAMPLES, expected_message

Verdict = Literal["ok", "refused", "InvalidSpec"]
JUDGED_EXAMPLES = INVALID_EXAMPLES / "judged"
FILES = (
    sorted(EXAMPLES.glob("*.yaml"))
    + sorted(INVALID_EXAMPLES.glob("*.yaml"))
    + sorted(JUDGED_EXAMPLES.glob("*.yaml"))
)
STATUS_TIMEOUT_S = 30
runner = CliRunner()


def local_verdict(path: Path) -> tuple[Verdict, str]:
    """What `modelplane run --check` says of the file, and its words."""
    result = runner.invoke(app, ["run", "--check", str(path)])
    if result.exit_code == 0:
        return "ok", result.output
    assert result.exit_code == 1, result.output
    said: Verdict = "InvalidSpec" if f"({REASON_INVALID_SPEC})" in result.output else "refused"
    return said, result.output


def cluster_verdict(cluster: LocalCluster, namespace: str, path: Path) -> tuple[Verdict, str]:
    """What the cluster says of the file: the API server's refusal, or, once applied, the
    operator's InvalidSpec conditions on the status it writes for each resource."""
    dry_run = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False
    )
    if dry_run.returncode != 0:
        return "refused", dry_run.stderr
    cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]

    def statuses() -> list[dict[str, Any]] | None:
        found = []
        for document in documents:
            item = cluster.get_json(
                document["kind"].lower(), document["metadata"]["name"], "-n", namespace
            )
            status = item.get("status") or {}
            if status.get("observedGeneration") != item["metadata"]["generation"]:
                return None
            found.append(status)
        return found

    seen = wait_for(statuses, timeout=STATUS_TIMEOUT_S, what=f"a status on {path.name}")
    invalid = [
        str(condition.get("message"))
        for status in seen
        for condition in status.get("conditions") or []
        if condition.get("reason") == REASON_INVALID_SPEC
    ]
    return ("InvalidSpec", "\n".join(invalid)) if invalid else ("ok", "")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_modelplane_run_and_the_cluster_give_the_same_verdict(
    crds: LocalCluster, operator: OperatorProcess, namespace: str, path: Path
) -> None:
    on_cluster, cluster_words = cluster_verdict(crds, namespace, path)
    here, local_words = local_verdict(path)
    assert here == on_cluster, f"local: {local_words}\ncluster: {cluster_words}"
    if path.parent in (INVALID_EXAMPLES, JUDGED_EXAMPLES):
        expected = expected_message(path)
        assert on_cluster == ("refused" if path.parent == INVALID_EXAMPLES else "InvalidSpec")
        assert expected in cluster_words, cluster_words
        assert expected in local_words, local_words
    else:
        assert on_cluster == "ok", cluster_words
