# One image for Pier's three services (health, router, warmup); each compose service picks its
# `python -m services.<name>` command. They share the `shared` package and every dependency, so one
# build, one pull and one version to roll out keep them in step.
#
# No `# syntax=` line on purpose: the builder's bundled Dockerfile frontend is enough (RUN --mount is
# stable since Dockerfile 1.2) and fetching a frontend image would need a registry.
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/pier \
    PATH=/opt/pier/bin:$PATH \
    PYTHONPATH=/app
WORKDIR /app
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin pier

# Dependency layer: it depends on pyproject.toml only, so editing the code does not reinstall anything.
# A build that goes through a TLS-inspecting proxy can pass its CA bundle as the build secret `ca`
# (docker build --secret id=ca,src=/path/ca.crt); without it pip uses the image's own CA store.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python -m venv /opt/pier \
 && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && pip install -q -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code: owned by root, read-only for the service user.
COPY shared ./shared
COPY services ./services

USER 10001:10001

EXPOSE 40114
CMD ["python", "-m", "services.router"]
