# syntax=docker/dockerfile:1
# GENERATED from images/recipes.toml by `python -m modelplane_harness.images dockerfiles`;
# do not edit (tests/unit/test_images.py fails when this file is stale). The same
# recipe builds the image without Docker: `python -m modelplane_harness.images build`.
#
# The modelplane runtime: training, evaluation and serving pods (torch, Ray Serve, HAProxy).
#
#   docker build -f images/runtime.Dockerfile --build-arg FLAVOR=cuda -t ghcr.io/modelplane/runtime:0.1.0-cuda .
#   docker build -f images/runtime.Dockerfile --build-arg FLAVOR=cpu -t ghcr.io/modelplane/runtime:0.1.0-cpu .
#   cuda: PyPI's torch, which carries its CUDA libraries (nvidia-* wheels); it runs on CPU nodes too.
#   cpu: The same torch version from PyTorch's CPU index, about 1/10 of the size.
#
# The base is pinned to a Debian point release; CI with registry access should pin its digest too.
ARG FLAVOR=cuda

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM debian:12.15-slim AS base
RUN apt-get update \
 && apt-get install --yes --no-install-recommends \
      python3.11 \
      python3 \
      python-is-python3 \
      ca-certificates \
      libstdc++6 \
      zlib1g \
      libquadmath0 \
 && groupadd --gid 1000 modelplane && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin modelplane && for path in /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian /var/lib/apt/lists /var/cache/apt /var/log; do if [ -d "$path" ]; then find "$path" -mindepth 1 ! -type d ! -name copyright -delete && find "$path" -mindepth 1 -depth -type d -empty -delete; fi; done

FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY runtime runtime
COPY cli cli
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv --mount=type=cache,target=/root/.cache/uv \
    SOURCE_DATE_EPOCH=0 UV_LINK_MODE=copy uv build --wheel --python /usr/bin/python3.11 --out-dir /dist /src

FROM base
ARG FLAVOR
# The dependencies layer: every pinned dependency of the extras, not modelplane.
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=constraints.txt,target=/src/constraints.txt \
    --mount=type=bind,source=uv.toml,target=/src/uv.toml \
    case "$FLAVOR" in cuda) backend=;; cpu) backend='--torch-backend cpu';; *) echo "FLAVOR must be one of: cuda cpu" >&2; exit 1;; esac \
 && SOURCE_DATE_EPOCH=0 UV_LINK_MODE=copy uv pip install --prefix /opt/modelplane --python /usr/bin/python3.11 --compile-bytecode --config-file /src/uv.toml -c /src/constraints.txt -r /src/pyproject.toml --extra runtime --extra serve $backend \
 && rm -f /opt/modelplane/.lock /opt/modelplane/lib/*/site-packages/*.dist-info/direct_url.json
# The app layer: the modelplane wheel alone.
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv --mount=type=cache,target=/root/.cache/uv --mount=from=wheel,source=/dist,target=/dist \
    SOURCE_DATE_EPOCH=0 UV_LINK_MODE=copy uv pip install --prefix /opt/modelplane --python /usr/bin/python3.11 --compile-bytecode --no-deps /dist/modelplane-0.1.0-py3-none-any.whl \
 && rm -f /opt/modelplane/.lock /opt/modelplane/lib/*/site-packages/*.dist-info/direct_url.json
ENV PATH="/opt/modelplane/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    PYTHONPATH="/opt/modelplane/lib/python3.11/site-packages" \
    PYTHONUNBUFFERED="1" \
    PYTHONDONTWRITEBYTECODE="1" \
    HOME="/tmp"
LABEL "org.opencontainers.image.source"="https://github.com/modelplane/modelplane" \
      "org.opencontainers.image.licenses"="Apache-2.0" \
      "org.opencontainers.image.vendor"="modelplane" \
      "org.opencontainers.image.title"="modelplane-runtime" \
      "org.opencontainers.image.description"="The modelplane runtime: training, evaluation and serving pods (torch, Ray Serve, HAProxy)." \
      "org.opencontainers.image.version"="0.1.0" \
      "io.modelplane.runtime.flavor"="$FLAVOR"
USER 1000:1000
ENTRYPOINT ["python", "-m", "modelplane_runtime"]
