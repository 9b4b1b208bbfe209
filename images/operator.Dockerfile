# The operator image: kopf, lightkube, pydantic, optuna; no torch, no ray.
#
#   docker build -f images/operator.Dockerfile -t ghcr.io/modelplane/operator:0.1.0 .
#
# Base pinned to an exact Python patch release and Debian suite; CI with registry
# access should pin the digest as well (docker buildx imagetools inspect).
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator operator
COPY runtime runtime
COPY cli cli
# Only the operator extra: the runtime package is installed for its torch-free contract
# module (import-linter keeps the operator off torch and ray).
RUN python -m venv /opt/modelplane \
 && /opt/modelplane/bin/pip install -c constraints.txt ".[operator]"

FROM python:3.11.14-slim-bookworm
COPY --from=build /opt/modelplane /opt/modelplane
ENV PATH=/opt/modelplane/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Non-root; the chart runs it with a read-only root filesystem and an emptyDir on /tmp.
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin modelplane
USER 1000:1000
ENTRYPOINT ["python", "-m", "modelplane_operator"]
