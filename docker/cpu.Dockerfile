# CPU image: hierarcaps + Prefect with the transformers backend (profiles offline and small).
# Build, from the repo root:   docker build -f docker/cpu.Dockerfile -t hierarcaps-cpu .
# Run a build:                 docker run --rm -v "$PWD/runs:/opt/hierarcaps/runs" hierarcaps-cpu \
#                                hierarcaps build --input data/coco_captions_100.parquet --out runs/demo
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
WORKDIR /opt/hierarcaps

# CPU wheels of torch first: the default PyPI torch pulls ~3 GB of CUDA libraries this image never uses.
RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu

# Dependencies and package before flows/data, so editing a flow does not reinstall torch & co.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[offline-models]"

COPY flows ./flows
COPY prefect.yaml ./
COPY data ./data

CMD ["hierarcaps", "--help"]
