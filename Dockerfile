# GPU image for paso-artifact: the seed's stack (PyTorch 2.5.1, CUDA 12.1, Python 3.11).
#   docker build -t paso-artifact .
#   docker run --gpus all --rm -v "$PWD/artifacts:/workspace/paso-artifact/artifacts" paso-artifact
#   docker run --gpus all --rm -p 8888:8888 paso-artifact jupyter lab --ip 0.0.0.0 --allow-root
# Methods pick NCCL and one GPU per worker automatically when CUDA is visible.
FROM pytorch/pytorch:2.5.1-cuda12.1-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PASO_ARTIFACTS=/workspace/paso-artifact/artifacts

RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/paso-artifact
COPY pyproject.toml README.md ./
COPY paso_core ./paso_core
# torch/torchvision come from the base image; the extras add the notebook and text stacks.
RUN pip install -e ".[text,notebooks,test,hub]" jupyterlab && python -m ipykernel install --name python3
COPY . .

CMD ["python", "-m", "paso_core.reproduce", "--scale", "default"]
