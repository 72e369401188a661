# One image for the API and the worker (docker-compose.yml picks the command).
FROM node:22-slim AS frontend
WORKDIR /src
COPY frontend/ frontend/
RUN if [ -f frontend/package.json ]; then cd frontend && npm ci && npm run build; else mkdir -p frontend/dist; fi

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY backend/ backend/
COPY worker/ worker/
COPY migrations/ migrations/
COPY --from=frontend /src/frontend/dist/ frontend/dist/
# Editable install: migrations/ and frontend/dist/ are found next to the packages.
RUN pip install --no-cache-dir -e .
ENV CIRCUITS_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["circuits", "serve", "--host", "0.0.0.0", "--port", "8000"]
