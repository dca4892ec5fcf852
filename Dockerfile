# wagon-detector: the REST API on CPU. Build: docker build -t wagon-detector .
# Run:   docker run -p 8000:8000 -v wagon-data:/data wagon-detector
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/wagon-detector

# CPU-only PyTorch first, so that installing the project does not pull the (much larger) CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md LICENSE ./
COPY app/ app/
COPY training/ training/
RUN pip install .

COPY models/ models/

RUN useradd --system --uid 10001 --create-home --home-dir /home/wagon --shell /usr/sbin/nologin wagon \
    && mkdir -p /data \
    && chown wagon /data

# The installed `app` package lives in site-packages, so the weights get an absolute path.
ENV WAGON_DATABASE_URL=sqlite:////data/wagon.db \
    WAGON_ARCHIVE_DIR=/data/originals \
    WAGON_JOBS_SQLITE_PATH=/data/jobs.db \
    WAGON_MODEL_PATH=/opt/wagon-detector/models/wagon-obb.pt \
    WAGON_ULTRALYTICS_DIR=/tmp/ultralytics \
    YOLO_OFFLINE=1

USER wagon
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["wagon-detector", "serve", "--host", "0.0.0.0", "--port", "8000"]
