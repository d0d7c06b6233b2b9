# The image docker-compose.yml runs as the bot and as each GPU worker (see docs/DEPLOY.md).
FROM python:3.11-slim

# PyICU (the content filter's Unicode confusables) builds against the system ICU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libicu-dev pkg-config g++ \
    && rm -rf /var/lib/apt/lists/*

# Torch first, so nothing else pulls a different build. PyPI's Linux wheel is the CUDA build; pick another with
#   docker compose build --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install --no-cache-dir ${TORCH_SPEC}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot bot
COPY generation generation
COPY migrations migrations
RUN pip install --no-cache-dir .

# Not root; the folders named volumes mount on are created here so the volumes belong to this user.
RUN useradd --create-home imagine \
    && mkdir -p /data/images /home/imagine/.cache/huggingface \
    && chown -R imagine:imagine /data /home/imagine/.cache
USER imagine
WORKDIR /home/imagine
