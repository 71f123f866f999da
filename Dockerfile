# GPU image for paso-artifact: the seed's stack (PyTorch 2.5.1, CUDA 12.1, Python 3.11), with the
# Hugging Face releases that still run on it pinned by constraints/torch25.txt (transformers 5 refuses
# torch < 2.6). The entry point is docker/entrypoint.sh (tested outside Docker):
#   docker build -t paso-artifact .
#   docker run --gpus all --rm -v "$PWD/artifacts:/workspace/paso-artifact/artifacts" paso-artifact
#   docker run --gpus all --rm paso-artifact artifacts smoke      # or: test | stack-check | gpu-check | help
#   docker run --gpus all --rm -p 8888:8888 paso-artifact jupyter lab --ip 0.0.0.0 --allow-root
# Methods pick NCCL and one GPU per worker automatically when CUDA is visible.
FROM pytorch/pytorch:2.5.1-cuda12.1-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PASO_ARTIFACTS=/workspace/paso-artifact/artifacts

RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/paso-artifact
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY paso_core ./paso_core
# torch/torchvision come from the base image (the constraints hold them at 2.5.1 / 0.20.1, so pip
# keeps them); the extras add the notebook and text stacks. The last line fails the build if the
# text stack does not import on this torch.
RUN pip install -e ".[text,notebooks,test,hub]" jupyterlab -c constraints/torch25.txt \
    && python -m ipykernel install --name python3 \
    && python -c "import torch, transformers, peft, datasets; from transformers import LlamaForCausalLM; \
print('torch', torch.__version__, 'transformers', transformers.__version__)"
COPY . .

ENTRYPOINT ["/workspace/paso-artifact/docker/entrypoint.sh"]
CMD ["artifacts"]
