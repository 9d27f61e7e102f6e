# syntax=docker/dockerfile:1
# The `kpi` command (worker, serve, simulate, ...) in a slim image; see docker-compose.yml.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kpi_state/ kpi_state/
COPY streams/ streams/
COPY kpi_app/ kpi_app/
RUN pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# faust keeps a data directory in the working directory: give the user a writable one.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kpi --shell /usr/sbin/nologin kpi \
    && install -d -o kpi -g kpi /var/lib/kpi
COPY --from=build /opt/venv /opt/venv
USER kpi
WORKDIR /var/lib/kpi
# 9300: kpi serve (ingest, API, wall page, /metrics); 9400: worker web port (/metrics).
EXPOSE 9300 9400
ENTRYPOINT ["kpi"]
CMD ["--help"]
