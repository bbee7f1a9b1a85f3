# One image for the four backup_pipelines services of docker-compose.yml (and
# the Kubernetes deployment): the code server, the verifier, dagster-webserver
# and dagster-daemon differ only in their command.
FROM python:3.11-slim-bookworm

# The tools the backups drive. postgresql-client is 15, like the compose file's
# PostgreSQL: pg_dump must be at least the server's major version. The
# verifier's drills start throw-away servers: PostgreSQL's (initdb, without
# the cluster the package would make) and redis-server.
RUN mkdir -p /etc/postgresql-common \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-client postgresql-15 redis-tools redis-server restic zstd ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/backup_pipelines
COPY pyproject.toml requirements.lock ./
COPY backup_pipelines ./backup_pipelines
# The lock pins every version; as constraints it installs only what the
# package needs at run time (no test tools).
RUN pip install --no-cache-dir --constraint requirements.lock .

ENV DAGSTER_HOME=/opt/dagster/home \
    BACKUP_ARTIFACTS_DIR=/var/lib/backup-artifacts
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/
RUN useradd --system --uid 10001 --home-dir /opt/dagster/home dagster \
 && mkdir -p /opt/dagster/home/storage /var/lib/backup-artifacts \
 && chown -R dagster /opt/dagster/home /var/lib/backup-artifacts
USER dagster

EXPOSE 3000 4000 4001
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "backup_pipelines.definitions", "--location-name", "backup_pipelines"]
