"""The `modelplane` command: generate CRDs, validate resources, run locally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.apidocs import api_reference_is_stale, write_api_reference
from modelplane_operator.constants import REASON_INVALID_SPEC
from modelplane_operator.crdgen import stale_crds, write_crds
from modelplane_operator.judge import judge_training, unreachable_without_default
from modelplane_operator.validation import Checked, Problem, check_file

app = typer.Typer(
    help="modelplane: train, tune, evaluate and serve PyTorch models on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Problems quote CEL rules full of [brackets]: print them verbatim, never as markup.
# Relative to the repository root: the CRDs to apply by hand, and the chart's copy
# (Helm installs a chart's crds/ before its templates and never deletes them).
CRD_DIRECTORIES = (Path("crds"), Path("helm/modelplane/crds"))
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def crds(
    directories: Annotated[
        list[Path] | None,
        typer.Option(
            "--dir", help="Where the CRDs live (repeatable); default: crds/ and the chart's."
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the files differ instead of writing.")
    ] = False,
) -> None:
    """Write the CustomResourceDefinitions generated from the API models."""
    for directory in directories or list(CRD_DIRECTORIES):
        if check:
            stale = stale_crds(directory)
            if stale:
                err.print(
                    f"[red]stale:[/red] {', '.join(stale)} in {directory}; run `modelplane crds`"
                )
                raise typer.Exit(1)
            out.print(f"{directory}: up to date")
            continue
        for path in write_crds(directory):
            out.print(f"wrote {path}")


@app.command()
def docs(
    path: Annotated[Path, typer.Option("--out", help="Where the API reference goes.")] = Path(
        "docs/api-reference.md"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the file differs instead of writing.")
    ] = False,
) -> None:
    """Write the API reference generated from the API models."""
    if check:
        if api_reference_is_stale(path):
            err.print(f"[red]stale:[/red] {path}; run `modelplane docs`")
            raise typer.Exit(1)
        out.print(f"{path}: up to date")
        return
    write_api_reference(path)
    out.print(f"wrote {path}")


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="YAML files with modelplane resources.")],
) -> None:
    """Check resources the way the API server and the operator will, and explain errors."""
    failed = 0
    for path in files:
        for checked in check_file(path):
            if checked.ok:
                out.print(f"[green]ok[/green]      {checked.source}: {checked.name}")
                _warn_of_credentials(checked)
                continue
            failed += 1
            out.print(f"[red]invalid[/red] {checked.source}: {checked.name}")
            for problem in checked.problems:
                out.print(f"  - {problem}", markup=False)
    if failed:
        raise typer.Exit(1)


def _warn_of_credentials(checked: Checked) -> None:
    """An s3:// URI without spec.storage is valid, and runs only where the operator has a
    default Secret (the chart's storage.defaultSecretName): say so, without failing."""
    resource = checked.resource
    if not isinstance(resource, ModelTraining | ModelDeployment):
        return
    if (problem := unreachable_without_default(resource)) is not None:
        out.print(
            f"  warning: Failed ({REASON_INVALID_SPEC}) on a cluster whose operator has no "
            f"default storage Secret: {problem}",
            markup=False,
        )


def verdict(checked: Checked) -> tuple[str, tuple[Problem, ...]]:
    """What a cluster would say of one resource before running anything: `refused` (the
    API server refuses it at apply), `InvalidSpec` (the operator accepts it, then fails it
    with that reason and these problems) or `ok` (it would run)."""
    if not checked.ok:
        return "refused", checked.problems
    judged: tuple[Problem, ...] = ()
    if isinstance(checked.resource, ModelTraining):
        judged = tuple(judge_training(checked.resource))
    elif isinstance(checked.resource, ModelDeployment):
        from modelplane.serving import spec_problems  # noqa: PLC0415

        judged = tuple(spec_problems(checked.resource))
    return (REASON_INVALID_SPEC, judged) if judged else ("ok", ())


def _refuse_without_credentials(results: list[Checked]) -> None:
    """Exit 1 before anything runs when an s3:// URI has no credentials in this
    environment: a file that trains and then serves fails at once, not after training."""
    from modelplane.local import credentials_refusal, resource_uris  # noqa: PLC0415

    for checked in results:
        if isinstance(checked.resource, ModelTraining | ModelDeployment):
            refusal = credentials_refusal(resource_uris(checked.resource))
            if refusal is not None:
                err.print(f"[red]cannot run[/red] {checked.source}: {checked.name}")
                err.print(f"  - {refusal}", markup=False)
                raise typer.Exit(1)


def _print_verdict(checked: Checked, said: str, problems: tuple[Problem, ...]) -> None:
    if said == "ok":
        out.print(f"[green]ok[/green]      {checked.source}: {checked.name}: would run")
        return
    if said == "refused":
        err.print(f"[red]invalid[/red] {checked.source}: {checked.name}: refused at apply")
    else:
        # The phase the operator gives it: a training Fails, a deployment is Rejected.
        phase = "Rejected" if isinstance(checked.resource, ModelDeployment) else "Failed"
        err.print(
            f"[red]{phase} ({said})[/red] {checked.source}: {checked.name}: the spec cannot "
            "run as written"
        )
    for problem in problems:
        err.print(f"  - {problem}", markup=False)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="A ModelTraining or ModelDeployment YAML file.")],
    predict: Annotated[
        list[str] | None,
        typer.Option(
            "--predict",
            help="ModelDeployment: answer this input (text, or a JSON list of numbers), "
            "print the answers and stop instead of serving until Ctrl-C. Repeatable.",
        ),
    ] = None,
    chat: Annotated[
        str | None,
        typer.Option(
            "--chat",
            help="ModelDeployment of a language model: send this message to its OpenAI "
            "chat route (greedy decoding), stream the answer to the terminal and stop.",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="ModelDeployment: local HTTP port.")] = 8000,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Run nothing: print each resource's verdict (ok, refused at apply, or "
            "Failed with reason InvalidSpec) and exit 0 only if every one would run.",
        ),
    ] = False,
) -> None:
    """Run a ModelTraining or ModelDeployment on this machine, without a cluster.

    Documents run in order, so one file can train a model and then serve it. Nothing
    runs unless every resource passes what a cluster checks first: the API server's
    rules (as `modelplane validate`) and the operator's judgement of the spec (a
    resource it would fail with reason InvalidSpec is refused here with the same field
    and message, exit 1). `--check` stops there and prints each verdict.
    pvc://<claim>/<path> maps to ./runs/<claim>/<path> (set MODELPLANE_PVC_ROOT to move it).
    """
    results = list(check_file(file))
    verdicts = [(checked, *verdict(checked)) for checked in results]
    for checked, said, problems in verdicts:
        if check or said != "ok":
            _print_verdict(checked, said, problems)
    if any(said != "ok" for _, said, _ in verdicts):
        raise typer.Exit(1)
    if check:
        return
    from modelplane.local import (  # noqa: PLC0415
        exit_code,
        print_summary,
        print_tuning_summary,
        run_training,
        run_tuning,
    )
    from modelplane.serving import record_training, serve  # noqa: PLC0415

    _refuse_without_credentials(results)
    for checked in results:
        resource = checked.resource
        if isinstance(resource, ModelDeployment):
            code = serve(resource, console=out, port=port, inputs=_inputs(predict or []), chat=chat)
            if code != 0:
                raise typer.Exit(code)
            continue
        if not isinstance(resource, ModelTraining):
            raise TypeError(f"unexpected resource {type(resource).__name__}")
        name = resource.metadata.name or "training"
        if resource.spec.tuning is not None:
            search = run_tuning(resource, console=out)
            code = print_tuning_summary(resource, search, out)
            if code != 0:
                raise typer.Exit(code)
            best = search.best
            if best is not None and best.run.result is not None:
                record_training(name, best.run.result)
            continue
        outcome = run_training(resource, console=out)
        print_summary(outcome, out)
        if outcome.result is None:
            raise typer.Exit(exit_code(outcome))
        record_training(name, outcome.result)


def _inputs(values: list[str]) -> list[Any]:
    """--predict values: a JSON list stays a list of numbers, anything else is text."""
    parsed: list[Any] = []
    for value in values:
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        parsed.append(decoded if isinstance(decoded, list) else value)
    return parsed


dev_app = typer.Typer(help="Developer tools.", no_args_is_help=True)
cluster_app = typer.Typer(
    help="The local test cluster: a control plane with kwok's simulated nodes, or one real node."
)
dev_app.add_typer(cluster_app, name="cluster")
app.add_typer(dev_app, name="dev")


def _harness_missing() -> typer.Exit:
    err.print(
        "`modelplane dev` needs the dev harness (harness/, installed with the dev extra): "
        "run scripts/bootstrap.sh in a modelplane checkout"
    )
    return typer.Exit(2)


def _state_file() -> Path:
    try:
        from modelplane_harness.cluster import cache_dir  # noqa: PLC0415  (dev-only)
    except ImportError:
        raise _harness_missing() from None
    return cache_dir() / "devcluster" / "state.json"


@cluster_app.command("up")
def cluster_up(
    real_node: Annotated[
        bool,
        typer.Option(
            "--real-node",
            help="One real kubelet node (containerd, CNI, kube-proxy, CoreDNS in a network "
            "namespace of its own) holding the operator and runtime images built from this "
            "tree, instead of kwok's simulated nodes. Needs root.",
        ),
    ] = False,
) -> None:
    """Build (or reuse) the binaries, start the cluster and print its KUBECONFIG."""
    state_file = _state_file()
    from modelplane_harness.cluster import (  # noqa: PLC0415
        LocalCluster,
        build_binaries,
        eprint,
        save_state,
    )

    if state_file.exists():
        err.print(f"a cluster is already up ({state_file}); run `modelplane dev cluster down`")
        raise typer.Exit(1)
    workdir = state_file.parent
    # No state file means no cluster runs: what is left is an old cluster's data.
    shutil.rmtree(workdir, ignore_errors=True)
    images = []
    if real_node:
        from modelplane_harness.images import build_images  # noqa: PLC0415

        images = build_images(["operator", "runtime"])
    local = LocalCluster(workdir, build_binaries(), real_node=real_node)
    local.owner = None  # it outlives this command, until `dev cluster down`
    local.start(log=eprint)
    save_state(local.state(), state_file)
    if local.node is not None:
        from modelplane_harness.images import import_image  # noqa: PLC0415

        for image in images:
            eprint(f"importing {image.ref}")
            import_image(image, containerd_address=local.node.containerd_address)
    out.print(f"export KUBECONFIG={local.kubeconfig}")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the cluster that `dev cluster up` started (and its real node, leaving nothing)."""
    state_file = _state_file()
    from modelplane_harness.cluster import stop_from_state  # noqa: PLC0415

    if not state_file.exists():
        err.print("no cluster is up")
        raise typer.Exit(1)
    stop_from_state(state_file)
    out.print("cluster stopped")


def main() -> None:
    app()
