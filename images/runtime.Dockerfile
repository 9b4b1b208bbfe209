# The runtime image: training, evaluation and serving pods (torch, Ray Serve, HAProxy).
# One Dockerfile, two variants of the same code:
#
#   docker build -f images/runtime.Dockerfile --build-arg FLAVOR=cuda -t ghcr.io/modelplane/runtime:0.1.0-cuda .
#   docker build -f images/runtime.Dockerfile --build-arg FLAVOR=cpu  -t ghcr.io/modelplane/runtime:0.1.0-cpu .
#
# cuda: PyPI's torch wheel, which carries its CUDA libraries (nvidia-* wheels), so the
# base needs no CUDA toolkit; it also runs on CPU nodes. cpu: the same torch version from
# PyTorch's CPU index, about 1/10 of the size.
ARG FLAVOR=cuda
FROM python:3.11.14-slim-bookworm AS build
ARG FLAVOR
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator operator
COPY runtime runtime
COPY cli cli
RUN python -m venv /opt/modelplane \
 && if [ "$FLAVOR" = cpu ]; then \
      torch="$(grep '^torch==' constraints.txt)"; \
      /opt/modelplane/bin/pip install --index-url https://download.pytorch.org/whl/cpu "${torch}+cpu"; \
    fi \
 && /opt/modelplane/bin/pip install -c constraints.txt ".[runtime,serve]"

FROM python:3.11.14-slim-bookworm
ARG FLAVOR
LABEL io.modelplane.runtime.flavor=$FLAVOR
COPY --from=build /opt/modelplane /opt/modelplane
ENV PATH=/opt/modelplane/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# Non-root (the operator's pods run as 1000 with a read-only root filesystem; Ray and
# torch write under /tmp, an emptyDir).
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin modelplane
USER 1000:1000
ENTRYPOINT ["python", "-m", "modelplane_runtime"]
