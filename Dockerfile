# hookstream container image: one image, every subcommand (`docker run IMAGE router|sender|api|migrate|topics`).
# Build from the repository root: docker build -t hookstream:0.1.0 .
# No HEALTHCHECK: orchestrators probe /healthz and /readyz themselves (deploy/k8s).
#
# Two stages. `build` makes the sdist, the wheel and the hashed runtime requirements from uv.lock
# (deploy/build-dist.sh); the image installs them with deploy/install-wheel.sh. The same two
# scripts are what tests/integration/test_wheel.py runs, so the image's install path is tested.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# The uv of uv.lock, checked against its hashes (deploy/uv-bootstrap.txt, made by `make lock`).
COPY deploy/uv-bootstrap.txt ./deploy/
RUN pip install --require-hashes --no-deps -r deploy/uv-bootstrap.txt
COPY pyproject.toml uv.lock README.md LICENSE ./
# The locked build tools (the `build` dependency group), checked against their hashes.
RUN uv export --locked --only-group build --no-emit-project --format requirements-txt \
        --quiet --output-file /tmp/build-requirements.txt \
    && pip install --require-hashes --no-deps -r /tmp/build-requirements.txt
COPY deploy/build-dist.sh deploy/install-wheel.sh ./deploy/
COPY hookstream ./hookstream
RUN PYTHON=python UV=uv bash deploy/build-dist.sh /dist


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOOKSTREAM_LOG_FORMAT=json

RUN groupadd --system --gid 10001 hookstream \
    && useradd --system --uid 10001 --gid hookstream --no-create-home --home-dir /nonexistent hookstream

# The wheel and the locked dependencies go into site-packages; no source tree is copied.
COPY --from=build /dist /tmp/dist
COPY --from=build /src/deploy/install-wheel.sh /tmp/install-wheel.sh
RUN bash /tmp/install-wheel.sh python /tmp/dist \
    && rm -rf /tmp/dist /tmp/install-wheel.sh \
    && hookstream --help >/dev/null \
    && python -c "import hookstream.api.app, hookstream.api.console, hookstream.router.router, hookstream.sender.sender"

USER 10001:10001
WORKDIR /tmp

# api (and `all`) on 8080, router metrics on 9101, sender metrics on 9102. In a container the
# listeners must bind 0.0.0.0: set HOOKSTREAM_API_LISTEN / HOOKSTREAM_METRICS_LISTEN (deploy/).
EXPOSE 8080 9101 9102

ENTRYPOINT ["hookstream"]
CMD ["all"]
