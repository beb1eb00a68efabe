# syntax=docker/dockerfile:1
# One image for every role: `argd serve` (API), `argd worker` (GPU worker), `argd migrate` (one-shot).
# torch comes from the PyTorch CUDA index in its own layer, before the project, so that rebuilding after a
# code change does not download it again and `pip install .` keeps this CUDA build (pyproject bounds
# torch to >=2.4,<3 and does not pin a build).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ARG TORCH_SPEC="torch>=2.4,<3"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ARGD_DATA_DIR=/var/lib/argd

RUN groupadd --system --gid 10001 argd \
    && useradd --system --uid 10001 --gid argd --home-dir /home/argd --create-home --shell /usr/sbin/nologin argd \
    && mkdir -p /var/lib/argd \
    && chown argd:argd /var/lib/argd

RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/argd
COPY . .
# The [s3] extra is the S3-compatible artifact store; [mlflow] is MLflow's REST client, for the optional
# export of jobs (README, MLflow).
RUN pip install -e ".[s3,mlflow]" \
    && python -c "import argd.cli.main, torch; print('argd image: torch', torch.__version__, 'cuda', torch.version.cuda)"

USER argd
VOLUME ["/var/lib/argd"]
EXPOSE 8000
ENTRYPOINT ["argd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
