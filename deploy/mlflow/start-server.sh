#!/usr/bin/env bash
# The team MLflow server: runs and metrics in PostgreSQL, artifacts in one artifact root that the server proxies
# (jobs upload through HTTP, so they need no storage credentials). See README.md next to this file.
#
#   MLFLOW_DB=postgresql://mlflow:PASSWORD@db.example.org:5432/mlflow \
#   MLFLOW_ARTIFACTS=s3://ml-team-bucket/mlflow   # or /shared/mlflow-artifacts
#   deploy/mlflow/start-server.sh
set -euo pipefail
: "${MLFLOW_DB:?set MLFLOW_DB=postgresql://USER:PASSWORD@HOST:5432/mlflow}"
: "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS to a folder or an object-store URI (s3://, gs://, wasbs://)}"
HOST=${MLFLOW_HOST:-127.0.0.1}   # behind a reverse proxy that does TLS and auth; 0.0.0.0 only with --app-name basic-auth
PORT=${MLFLOW_PORT:-5000}

# MLflow 3's job runner (GenAI scorers) is not needed to track training runs
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

exec mlflow server \
    --backend-store-uri "$MLFLOW_DB" \
    --artifacts-destination "$MLFLOW_ARTIFACTS" \
    --host "$HOST" --port "$PORT" \
    --workers "${MLFLOW_WORKERS:-4}" \
    "$@"
