# BLO Vault API image. Build: docker build -t blo-vault .
FROM python:3.11-slim AS build
WORKDIR /src
# The build backend as locked too (requirements-build.lock), used in place of an isolated
# build environment that would take whatever setuptools is newest.
COPY requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-build.lock
COPY pyproject.toml setup.py README.md ./
COPY vault vault
COPY api api
COPY cli cli
COPY policies policies
# The wheel installs vault and blo_vault (api/ and cli/ as blo_vault.api and blo_vault.cli).
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/blo-vault --create-home vault
# Dependencies exactly as locked, every file checked against its hash (scripts/lock updates the
# lock); a layer of their own, so a code change doesn't reinstall them.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER vault
# Two arenas rather than one per thread: less of the transfers' freed 1 MiB buffers is held
# per thread; the server hands the rest back itself (VAULT_MALLOC_TRIM_SECONDS, api/memory.py).
# Not MALLOC_MMAP_THRESHOLD_: it curbs the creep more, but cost transfers 1.6-2.2x the
# server's CPU (BENCHMARKS.md, "Issue 14, 2026-12-06 05:45-07:15 UTC").
ENV VAULT_ENV=production \
    VAULT_DATA_DIR=/var/lib/blo-vault \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
# X-Forwarded-For is ignored unless VAULT_TRUSTED_PROXIES names your reverse proxy (IPs or
# CIDRs); set it when one is in front, or every client looks like the proxy to the lockout.
CMD ["blovault", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
