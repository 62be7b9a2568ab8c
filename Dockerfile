# One image for every process of the stack; docker-compose.yml picks the module each container runs.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY gateway ./gateway
COPY sms_service ./sms_service
COPY email_service ./email_service
COPY conversation_service ./conversation_service
RUN pip install .
USER nobody
