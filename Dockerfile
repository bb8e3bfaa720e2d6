# The pipeline's own services (worker, join app, demo traffic): `docker compose up` builds it.
FROM python:3.11-slim
WORKDIR /app
# CPU torch from PyTorch's index keeps the image small; a GPU image would use the CUDA wheels.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<3"
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producers producers
COPY consumers consumers
COPY shadow shadow
COPY prometheus prometheus
RUN pip install --no-cache-dir .
USER nobody
ENV SHADOW_STATE_DIR=/tmp/shadow
ENTRYPOINT ["shadow"]
