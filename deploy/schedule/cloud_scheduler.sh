#!/usr/bin/env bash
# A Cloud Scheduler job that launches the Flex Template every night at 02:00 UTC.
# Usage: PROJECT=... REGION=... BUCKET=... IMAGE=... SERVICE_ACCOUNT=... deploy/schedule/cloud_scheduler.sh
set -euo pipefail
BODY=$(cat <<JSON
{"launchParameter": {
  "jobName": "unrecord-nightly",
  "containerSpecGcsPath": "gs://${BUCKET}/templates/unrecord.json",
  "parameters": {"input": "gs://${BUCKET}/tfrecords/*.tfrecord",
                 "output": "gs://${BUCKET}/images",
                 "incremental": "true",
                 "sdk_container_image": "${IMAGE}"},
  "environment": {"tempLocation": "gs://${BUCKET}/tmp", "maxWorkers": 20}}}
JSON
)
gcloud scheduler jobs create http unrecord-nightly \
  --project "${PROJECT}" --location "${REGION}" --schedule "0 2 * * *" --time-zone UTC \
  --uri "https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch" \
  --http-method POST --headers Content-Type=application/json \
  --oauth-service-account-email "${SERVICE_ACCOUNT}" \
  --message-body "${BODY}"
