# hookstream container image: one image, every subcommand (`docker run IMAGE router|sender|api|migrate`).
# Build from the repository root: docker build -t hookstream:0.1.0 .
# No HEALTHCHECK: orchestrators probe /healthz and /readyz themselves (deploy/k8s).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOOKSTREAM_LOG_FORMAT=json

RUN groupadd --system --gid 10001 hookstream \
    && useradd --system --uid 10001 --gid hookstream --no-create-home --home-dir /app hookstream

WORKDIR /app

# Dependencies first, pinned by the constraints file, so code changes reuse this layer.
COPY deploy/requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir -r /tmp/requirements.lock

# hookstream/ finds hookstream/schemas/ (JSON Schemas, SQL migrations) next to the package, so the project is
# installed from /app in place (editable) rather than copied into site-packages without them.
COPY pyproject.toml ./
COPY services ./services
COPY schemas ./schemas
RUN pip install --no-cache-dir --no-deps -c /tmp/requirements.lock -e . \
    && python -c "import hookstream.cli, hookstream.core.validation" \
    && chmod -R a+rX,go-w /app

USER 10001:10001

# api (and `all`) on 8080, router metrics on 9101, sender metrics on 9102. In a container the
# listeners must bind 0.0.0.0: set HOOKSTREAM_API_LISTEN / HOOKSTREAM_METRICS_LISTEN (deploy/).
EXPOSE 8080 9101 9102

ENTRYPOINT ["hookstream"]
CMD ["all"]
