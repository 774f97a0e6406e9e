# GPU worker image: CUDA torch + vLLM (the paper profile's generator backend) + hierarcaps + Prefect, at /opt/hierarcaps.
# Build, from the repo root:   docker build -f docker/gpu.Dockerfile -t hierarcaps-gpu .
# The docker work pool (docker/gpu-pool.json) starts one container of it per flow run, with every GPU of the host.
#
# vllm/vllm-openai ships CUDA, the torch vLLM was built against, and vLLM itself; hierarcaps installs on top and keeps
# that torch (it satisfies torch>=2.4). vLLM stays an optional extra of hierarcaps, so the CPU install never needs it.
# If pip reports a fastapi conflict between vLLM and Prefect, pin VLLM_VERSION to a release whose fastapi range meets
# Prefect's (see docs/gpu-cluster.md).
ARG VLLM_VERSION=v0.11.0
FROM vllm/vllm-openai:${VLLM_VERSION}

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
WORKDIR /opt/hierarcaps

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[vllm]"

COPY flows ./flows
COPY prefect.yaml ./

# The base image's entrypoint starts the OpenAI server; Prefect's docker worker passes its own command
# (`prefect flow-run execute`), and `vllm serve MODEL` still works as a command for the openai backend.
ENTRYPOINT []
CMD ["prefect", "flow-run", "execute"]
