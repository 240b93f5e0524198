FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY workers ./workers
COPY admin ./admin
COPY Procfile ./
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
CMD ["ozzy", "web"]
