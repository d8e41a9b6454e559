FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mes ./mes
COPY connectors ./connectors
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system --home /app mes && mkdir -p /app/var \
    && chown mes /app/var
USER mes
EXPOSE 8000
CMD ["mes", "serve"]
