# The one image every Sluice process runs (API, query and ingest workers, Prefect worker, migrations);
# the command picks the role (compose.yaml, docs/deploy.md). Not built in this project's CI: no Docker engine there.
# The embedding model must be in the image or a mounted cache: nothing downloads at run time (SLUICE_OFFLINE).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libmagic1 libgl1 poppler-utils tesseract-ocr \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml constraints.txt requirements-nodeps.txt README.md ./
COPY sluice sluice
COPY tasks tasks
COPY evals evals
COPY serving serving
COPY flows flows
COPY cli cli
COPY migrations migrations
COPY alembic.ini prefect.yaml ./
COPY data data
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -c constraints.txt . && pip install --no-deps -r requirements-nodeps.txt
RUN useradd --create-home sluice && mkdir -p /var/lib/sluice && chown sluice /var/lib/sluice
USER sluice
ENV SLUICE_DATA_DIR=/var/lib/sluice
EXPOSE 8000
CMD ["sluice", "--help"]
