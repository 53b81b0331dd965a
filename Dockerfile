# telefum-bridge: one image for every role (listener, worker, and the demo's reference CRM
# and PBX simulator); docker-compose.yml picks the role with the command.
#
#   docker build -t telefum-bridge .
#   docker run --rm telefum-bridge telefum config check
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build from a copy of the source (.dockerignore keeps out .venv, tests, caches, var/).
WORKDIR /src
COPY . /src
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/telefum --create-home \
       --shell /usr/sbin/nologin telefum \
    && install -d -o telefum -g telefum /var/lib/telefum/spool \
    && install -d /etc/telefum

# The shipped example as the default; mount your own over it (compose does), and pass
# secrets as TELEFUM_<SECTION>__<KEY> environment variables.
COPY settings.toml /etc/telefum/settings.toml

ENV TELEFUM_CONFIG=/etc/telefum/settings.toml \
    TELEFUM_SPOOL_DIR=/var/lib/telefum/spool

# Never root: the bridge needs no privilege (it only opens outgoing connections and,
# for /health and /metrics, one unprivileged port).
USER telefum
WORKDIR /var/lib/telefum
VOLUME ["/var/lib/telefum"]
EXPOSE 8088

# All in one process (small installations); compose runs `telefum listen` and
# `telefum worker` apart instead.
CMD ["telefum", "run"]
