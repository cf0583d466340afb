#!/usr/bin/env bash
# Builds the container and the Flex Template spec. Usage:
#   PROJECT=my-project REGION=europe-west1 REPO=images BUCKET=my-bucket deploy/dataflow/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/unrecord:$(git rev-parse --short HEAD)"
docker build -f deploy/Dockerfile -t "${IMAGE}" .
docker push "${IMAGE}"
gcloud dataflow flex-template build "gs://${BUCKET}/templates/unrecord.json" \
  --image "${IMAGE}" --sdk-language PYTHON \
  --metadata-file deploy/dataflow/metadata.json
echo "template: gs://${BUCKET}/templates/unrecord.json  image: ${IMAGE}"
