"""The r2e test service's docker runtime against a real Docker engine, with images built offline
(`python -m envs.r2e images`). Skipped, with the reason, where no engine answers (`scripts/docker_engine.sh start`
starts one; .ci/run does). Containers are told apart by their owner label, so only what a test started is looked at.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from envs.r2e.cache import SAMPLES, read_index, sample_rows
from envs.r2e.client import TestServiceClient, tar_b64
from envs.r2e.docker_runtime import (
    OWNER_LABEL,
    ROLE_LABEL,
    SERVICE_ROLE,
    docker,
    engine_problem,
    labelled_containers,
    owner_label,
)
from envs.r2e.images import build_sample_images
from envs.r2e.reward import binary_test_reward, partial_test_reward
from envs.r2e.wire import TestRequest, TestResult
from services.process import ServiceProcess
from tests.fake_openai_server import start_scripted_server
from tests.helpers import ROOT, run_train, subprocess_env

PROBLEM = engine_problem()
needs_engine = pytest.mark.skipif(PROBLEM is not None, reason=f"docker runtime not testable here: {PROBLEM}")

ROWS = {r.repo_name: r for r in sample_rows()}
LIMITS = ("--memory-mb", "256", "--cpus", "0.5", "--pids-limit", "64")


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    """The sample images (the base root is kept in the default image cache, so only the first run debootstraps)."""
    return build_sample_images(rows_out=tmp_path_factory.mktemp("images") / "rows.jsonl")


def start_service(*extra: str) -> ServiceProcess:
    return ServiceProcess("envs.r2e.test_service", "--runtime", "docker", "--max-concurrent", "2", *LIMITS,
                          *extra).start()


@pytest.fixture(scope="module")
def service(rows_file):
    svc = start_service()
    yield svc
    svc.stop()


def containers_of(svc: ServiceProcess) -> list[str]:
    """Our labelled containers whose owner is this service's process."""
    return [cid for cid, owner in labelled_containers().items() if owner.split(":")[1:2] == [str(svc.proc.pid)]]


def request_for(row, files_dir: Path | None = None, test_cmd: str | None = None, timeout: float = 120) -> TestRequest:
    paths = [str(p.relative_to(files_dir)) for p in files_dir.rglob("*") if p.is_file()] if files_dir else []
    return TestRequest(docker_image=row.docker_image, instance_id=row.instance_id,
                       files_tar_b64=tar_b64(files_dir or SAMPLES, paths), test_cmd=test_cmd or row.test_cmd,
                       timeout=timeout)


def call(svc: ServiceProcess, request: TestRequest) -> TestResult:
    async def go():
        client = TestServiceClient([svc.url], svc.token, retries=0)
        try:
            return await client.test(request)
        finally:
            await client.aclose()

    return asyncio.run(go())


def wait_until(predicate, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@needs_engine
@pytest.mark.parametrize("name", sorted(ROWS))
def test_reference_fix_scores_one_and_half_fix_between_in_a_container(service, name, tmp_path):
    row = ROWS[name]
    (tmp_path / "untouched").mkdir()
    (tmp_path / "untouched" / "NOTES.txt").write_text("no source change")
    untouched = call(service, request_for(row, tmp_path / "untouched"))
    fixed = call(service, request_for(row, SAMPLES / name / "fix"))
    half = call(service, request_for(row, SAMPLES / name / "half_fix"))
    assert binary_test_reward(row.expected_output_json, untouched.test_output)[0] == 0.0
    assert binary_test_reward(row.expected_output_json, fixed.test_output)[0] == 1.0, fixed.test_output[-2000:]
    assert partial_test_reward(row.expected_output_json, fixed.test_output)[0] == 1.0
    share = partial_test_reward(row.expected_output_json, half.test_output)[0]
    assert 0.0 < share < 1.0 and binary_test_reward(row.expected_output_json, half.test_output)[0] == 0.0
    assert fixed.exit_code == 0 and not fixed.timed_out
    assert containers_of(service) == []  # removed after each success


PROBE = r"""python3 - <<'EOF'
import os, socket, time
try:
    socket.create_connection(("10.255.255.1", 80), timeout=2)
    print("NET open")
except OSError as exc:
    print("NET closed", exc.errno)
print("IFACES", ",".join(sorted(os.listdir("/sys/class/net"))))
for line in open("/proc/self/status"):
    if line.startswith("CapEff"):
        print("CAPS", line.split()[1])
for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
    if os.path.exists(path):
        quota = open(path).read().split()[0]
        period = open(path.replace("cfs_quota_us", "cfs_period_us")).read().split()[-1] if "quota" in path \
            else open(path).read().split()[1]
        print("CPUS", int(quota) / int(period))
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        children.append(pid)
except OSError:
    print("PIDS stopped at", len(children))
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
EOF
python3 -c "b = b'x' * (600 * 2**20); print('MEM', 'allocated')"
echo "MEM exit $?"
"""


@needs_engine
def test_container_has_no_network_no_capabilities_and_its_limits(service):
    result = call(service, request_for(ROWS["stats"], test_cmd=PROBE, timeout=60))
    out = result.test_output
    assert "NET closed" in out and "NET open" not in out, out
    assert "IFACES lo\n" in out, out  # --network none: loopback only
    assert "CAPS 0000000000000000" in out, out
    assert "CPUS 0.5" in out, out
    stopped = int(out.split("PIDS stopped at ")[1].split()[0])
    assert 0 < stopped < 64, out  # --pids-limit 64 (bash and python hold a few)
    assert "MEM allocated" not in out and "MEM exit 137" in out, out  # 600 MB under --memory-mb 256: killed
    assert containers_of(service) == []


@needs_engine
def test_timeout_kills_the_run_and_removes_its_container(service):
    started = time.monotonic()
    result = call(service, request_for(ROWS["stats"], test_cmd="echo started; sleep 120", timeout=2))
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 20
    assert containers_of(service) == []


@needs_engine
def test_client_disconnect_removes_the_container_at_once(service):
    body = request_for(ROWS["stats"], test_cmd="sleep 200", timeout=300).model_dump()
    errors: list[Exception] = []

    def impatient_client():
        try:
            httpx.post(f"{service.url}/test", json=body, timeout=5,
                       headers={"Authorization": f"Bearer {service.token}"})
        except httpx.TimeoutException as exc:
            errors.append(exc)

    thread = threading.Thread(target=impatient_client)
    thread.start()
    assert wait_until(lambda: containers_of(service), 10), "the test run's container never appeared"
    thread.join()
    assert errors, "the client should have given up after 5 s"
    assert wait_until(lambda: not containers_of(service), 10), "the container outlived its client"


@needs_engine
def test_a_killed_service_leaves_a_container_the_next_service_removes(rows_file):
    doomed = start_service()
    body = request_for(ROWS["stats"], test_cmd="sleep 200", timeout=300).model_dump()

    def client_of_the_doomed():
        with contextlib.suppress(httpx.HTTPError):  # its service is killed under it
            httpx.post(f"{doomed.url}/test", json=body, timeout=60, headers={"Authorization": f"Bearer {doomed.token}"})

    thread = threading.Thread(target=client_of_the_doomed, daemon=True)
    thread.start()
    assert wait_until(lambda: containers_of(doomed), 10)
    orphans = containers_of(doomed)
    os.kill(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait()
    assert set(containers_of(doomed)) == set(orphans)  # nobody removed it: the service was killed
    # A live owner's container (this test process plays the owner) must survive the next service's clean-up.
    alive = docker("create", "--label", f"{ROLE_LABEL}={SERVICE_ROLE}", "--label", f"{OWNER_LABEL}={owner_label()}",
                   "--network", "none", ROWS["stats"].docker_image, "true").stdout.decode().strip()
    try:
        successor = start_service()
        successor.stop()
        left = labelled_containers()
        assert not set(orphans) & set(left), "the stale container of the killed service is still there"
        assert alive in left, "the clean-up removed a container whose owner is alive"
    finally:
        docker("rm", "-f", alive, check=False)


@pytest.mark.parametrize(("argv", "says"), [
    (["-m", "envs.r2e.test_service", "--runtime", "docker"], "error: --runtime docker: no Docker engine answers"),
    ([str(ROOT / "train.py"), "--experiment-name", "x", "--env", "r2e", "--test-runtime", "docker"],
     "--test-runtime docker: no Docker engine answers"),
    (["-m", "envs.r2e", "images"], "error: no Docker engine answers"),
])
def test_no_engine_is_one_line_and_exit_2_before_any_work(argv, says, tmp_path):
    """Wherever the docker runtime is asked for and no engine answers (here: DOCKER_HOST names no socket)."""
    env = {**subprocess_env(), "DOCKER_HOST": f"unix://{tmp_path}/no.sock", "SERVICE_TOKEN": "t"}
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path if argv[0].endswith("train.py") else ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


# A scripted policy: the reference fix for some samples, the half fix for the others, then FINAL. Both runtimes see
# the very same rollouts, so their rewards must be equal, and not all alike (1.0 for a fix, a share for a half fix).
FIXED = {"datekit", "pagination", "stats"}


def scripted_reply(messages: list[dict]) -> str:
    task = next(m["content"] for m in messages if m["role"] == "user")
    name = next(n for n, row in ROWS.items() if row.problem_statement[:60] in task)
    folder = SAMPLES / name / ("fix" if name in FIXED else "half_fix")
    writes = "".join(f"write_file({p.name!r}, {p.read_text()!r})\n" for p in sorted(folder.iterdir()))
    return f"```repl\n{writes}FINAL('done')\n```"


@needs_engine
def test_cache_from_the_images_then_train_with_equal_rewards_on_both_runtimes(rows_file, tmp_path):
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-m", "envs.r2e", "cache", "--cache-dir", str(cache), "--dataset",
                           str(rows_file)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    index = read_index(cache)
    assert set(index) == {row.instance_id for row in ROWS.values()}
    for name, row in ROWS.items():  # /testbed came out of the image byte for byte
        sample = SAMPLES / name / "repo"
        expected = {str(p.relative_to(sample)): p.read_bytes() for p in sample.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts}
        cached = cache / index[row.instance_id]["cache_path"]
        assert {str(p.relative_to(cached)): p.read_bytes() for p in cached.rglob("*") if p.is_file()} == expected

    server = start_scripted_server(scripted_reply)
    try:
        rewards = {}
        for runtime in ("docker", "process"):
            art = tmp_path / runtime
            since = time.time()
            result = run_train(art, "same", "--env", "r2e", "--cache-dir", str(cache), "--dataset", str(rows_file),
                               "--test-runtime", runtime, "--vllm-url", server.base_url, "--reward", "partial",
                               "--max-training-steps", "1", "--groups-per-step", "6", "--rollouts-per-group", "2",
                               "--max-steps", "2", "--log-sample-rate", "1", "--seed", "3",
                               # --reward partial fails the check by design: a change that fixes nothing scores the
                               # untouched repo's share, above doing nothing's 0 (the README's r2e rewards)
                               "--skip-reward-check")
            assert result.returncode == 0, result.stderr[-3000:]
            created = docker("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}", "--filter",
                             "event=create", "--filter", f"label={ROLE_LABEL}={SERVICE_ROLE}", "--format", "{{.ID}}")
            # One fresh container per /test call (every rollout changed files) with docker, none with process.
            assert len(created.stdout.split()) == (12 if runtime == "docker" else 0)
            logged = [json.loads(p.read_text().splitlines()[0])["environment_kwargs"]
                      for p in (art / "logs" / "same").glob("step_*/*.jsonl")]
            rewards[runtime] = sorted((row["scenario_id"], row["reward"]) for row in logged)
    finally:
        server.stop()
    assert len(rewards["docker"]) == 12 and rewards["docker"] == rewards["process"]
    values = {reward for _, reward in rewards["docker"]}
    assert 1.0 in values and any(0.0 < r < 1.0 for r in values), rewards  # fixes score 1, half fixes a share


def test_a_test_container_mounts_nothing_and_gets_no_privilege():
    """The changed files travel on stdin: no host path (project, samples, other rollouts) is mounted in."""
    from envs.r2e.docker_runtime import DockerRuntime
    from envs.r2e.wire import TestRequest

    request = TestRequest(docker_image="img", instance_id="thermo__b2c3d4e5f607", files_tar_b64="")
    args = DockerRuntime()._run_args(request, "name")
    assert not {"-v", "--volume", "--mount", "--privileged", "--volumes-from", "--device"} & set(args)
    assert not any(a.startswith(("--volume=", "--mount=", "-v=", "--cap-add")) for a in args)
    assert "--network" in args and args[args.index("--network") + 1] == "none"
