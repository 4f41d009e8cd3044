# imagestudio: a slim image that runs as a non-root user.
#   docker build -t imagestudio .
#   docker run -e IMAGESTUDIO_API_TOKENS=... -p 8000:8000 imagestudio            # serve
#   docker run ... imagestudio worker --concurrency 8                             # a worker
# The entrypoint (deploy/entrypoint.sh) runs `imagestudio migrate` before `serve`.
# compose.yaml runs PostgreSQL, an S3-compatible store, the API and 2 workers; docs/deploy.md.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMAGESTUDIO_DATA_DIR=/data \
    IMAGESTUDIO_HOST=0.0.0.0 \
    IMAGESTUDIO_PORT=8000
RUN groupadd --system --gid 10001 imagestudio \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin imagestudio \
    && mkdir -p /data \
    && chown imagestudio:imagestudio /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/imagestudio-entrypoint
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["imagestudio-entrypoint"]
CMD ["serve"]
