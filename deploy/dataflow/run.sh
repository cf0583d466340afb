#!/usr/bin/env bash
# Runs the Flex Template. Usage:
#   PROJECT=... REGION=... BUCKET=... IMAGE=... INPUT=gs://... OUTPUT=gs://... deploy/dataflow/run.sh
# Workers use the same image as the launcher (sdk_container_image), so the worker code
# and its pinned dependencies are exactly the launcher's.
set -euo pipefail
gcloud dataflow flex-template run "unrecord-$(date +%Y%m%d-%H%M%S)" \
  --project "${PROJECT}" --region "${REGION}" \
  --template-file-gcs-location "gs://${BUCKET}/templates/unrecord.json" \
  --temp-location "gs://${BUCKET}/tmp" \
  --parameters input="${INPUT}" \
  --parameters output="${OUTPUT}" \
  --parameters incremental="${INCREMENTAL:-false}" \
  --parameters sdk_container_image="${IMAGE}" \
  --max-workers "${MAX_WORKERS:-20}"
