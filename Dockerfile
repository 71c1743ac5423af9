# fedattr: one image for every process of a Flower deployment (SuperLink, SuperExecs, SuperNodes,
# the flwr CLI). docker-compose.yml runs it once per process; docs/deployment.md has the steps.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_HOME=/flwr \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    FEDATTR_CACHE_DIR=/cache

WORKDIR /app

# The CPU build of torch first: the default wheel brings ~5 GB of CUDA libraries. For GPU nodes,
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 (or your CUDA).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "torch>=2.4" "torchvision>=0.19"

# Flower pinned to the project's version; the rest of the dependencies come from pyproject.toml.
COPY pyproject.toml README.md ./
COPY fedattr ./fedattr
RUN pip install "flwr[simulation]==1.42.0" . \
    && python -c "import flwr, fedattr; assert flwr.__version__ == '1.42.0', flwr.__version__"

# Scenarios (for `flwr run /app ... --run-config "scenario='/app/scenarios/...'"`) and the flwr CLI
# connections "docker" and "docker-tls" to the superlink service.
COPY scenarios ./scenarios
COPY docker/flwr-config.toml /flwr/config.toml
RUN mkdir -p /results /cache

# 8000: SuperLink (Fleet, Control and runtime APIs); 9094: a SuperNode's runtime API.
EXPOSE 8000 9094
CMD ["flwr", "--help"]
