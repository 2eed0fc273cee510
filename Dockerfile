# One image recipe for every part of imagerec. The Knative manifests (knative/) choose what a
# container runs: imagerec/serve.py serving the web or a workflow step.
#   web and steps:  docker build --target app .
#   detect-objects: docker build --target detector --build-arg EXTRAS=detector .
# Only the detector needs TensorFlow (EXTRAS=detector), and only it carries the SavedModel
# (stage `model`): by default fetched from the TF Hub handle at build time, or taken from a
# folder under models/ with --build-arg MODEL=models/<folder> (models/README.md). Either way no
# pod needs egress. Build with BuildKit: it builds only the stages a target needs.
FROM python:3.11-slim AS deps

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies before sources, pinned by the lock, so that editing the code does not
# reinstall TensorFlow on every build.
COPY pyproject.toml requirements.lock ./
RUN python -c "import sys, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [name for name in sys.argv[1].split(',') if name]; \
print('\n'.join(project['dependencies'] + [r for e in extras for r in project['optional-dependencies'][e]]))" \
      "$EXTRAS" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

FROM deps AS app
COPY README.md ./
COPY imagerec/ imagerec/
COPY functions/ functions/
COPY web/ web/
COPY workflows/ workflows/
# --no-deps: everything it needs is installed above, at the locked versions.
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info \
 && useradd --system --uid 10001 --create-home --no-log-init imagerec

# Numeric, so that Kubernetes can verify runAsNonRoot.
USER 10001
EXPOSE 8080
CMD ["imagerec-serve", "--app", "web:create_app()", "--port", "8080"]

# The detector's SavedModel, fetched and checked by knative/build/fetch_model.py (it loads the
# copy the way functions/detect_objects.py does). Needs EXTRAS=detector for tensorflow_hub.
FROM deps AS model
ARG MODEL=https://tfhub.dev/google/openimages_v4/ssd/mobilenet_v2/1
ENV TFHUB_CACHE_DIR=/tmp/tfhub
WORKDIR /build
COPY knative/build/fetch_model.py ./
COPY models/ models/
RUN python fetch_model.py "$MODEL" /opt/imagerec/model

FROM app AS detector
COPY --from=model /opt/imagerec/model /opt/imagerec/model
# Where the step loads it from (knative/steps.yaml sets the same path).
ENV IMAGEREC_DETECTOR_MODEL=/opt/imagerec/model
