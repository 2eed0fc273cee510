# One image recipe for every part of imagerec. The Knative manifests (knative/) choose what a
# container runs: gunicorn for the web, functions-framework for a workflow step.
# Only the detect-objects image needs TensorFlow: build it with --build-arg EXTRAS=detector.
FROM python:3.11-slim

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
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "web:create_app()"]
