# The relaybus processes (relay, workers, API, CLI) for docker-compose.yml.
FROM python:3.11.11-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml constraints.txt README.md ./
COPY relaybus ./relaybus
COPY alembic.ini ./
RUN pip install --no-cache-dir -c constraints.txt ".[shop,console]" \
    && install -d -o nobody -g nogroup /var/lib/relaybus
USER nobody
ENTRYPOINT []
CMD ["relaybus", "--help"]
