"""R2E-style Docker images of the bundled samples, built offline: `python -m envs.r2e images`.

No registry is needed (our machines reach none): a minimal Debian root with python3 and pytest is made with
`debootstrap` once and kept as a tar in the image cache dir, imported with `docker import` as the base image, and
each sample becomes one image, the base plus its repository at `/testbed` (with its `run_tests.sh`), named like
R2E's `namanjain12/<repo>_final:<commit>` under our own prefix (`cache.sample_image`). Every image carries a digest
label of what went into it, so a rerun rebuilds only what changed. The sample rows, with these names in
`docker_image`, are written as a dataset file for `python -m envs.r2e cache --dataset` and `train.py --dataset`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from envs.r2e.cache import SAMPLES, sample_rows
from envs.r2e.docker_runtime import OWNER_LABEL, ROLE_LABEL, docker, image_exists, owner_label

SUITE = "bookworm"
PACKAGES = ("python3", "python3-pytest", "python-is-python3")  # R2E run_tests.sh call `python`
BASE_IMAGE = f"local/r2e-base:{SUITE}"
DIGEST_LABEL = "art.r2e.digest"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")


class ImageBuildError(RuntimeError):
    pass


def default_image_cache() -> Path:
    return Path(os.environ.get("ART_R2E_IMAGE_CACHE") or Path.home() / ".cache" / "art-agent-trainer" / "r2e-images")


def _digest_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def _ensure_debootstrap(log: Callable[[str], None]) -> str:
    found = shutil.which("debootstrap") or (Path("/usr/sbin/debootstrap").exists() and "/usr/sbin/debootstrap")
    if found:
        return str(found)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ImageBuildError("debootstrap is missing: install it (apt-get install debootstrap) and run as root")
    log("installing debootstrap (apt-get)")
    subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True, capture_output=True)
    return shutil.which("debootstrap") or "/usr/sbin/debootstrap"


def base_rootfs(cache: Path, mirror: str, log: Callable[[str], None]) -> tuple[Path, str]:
    """The debootstrapped root as a tar in `cache` (made once), and its sha256."""
    tar = cache / f"{SUITE}-minbase-{'-'.join(PACKAGES)}.tar"
    stamp = tar.with_suffix(".sha256")
    if tar.exists() and stamp.exists():
        return tar, stamp.read_text().strip()
    if os.geteuid() != 0:
        raise ImageBuildError(f"debootstrap needs root to make {tar} (run once as root; later runs reuse it)")
    debootstrap = _ensure_debootstrap(log)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        done = subprocess.run([debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root),
                               mirror], capture_output=True, text=True)
        if done.returncode != 0:
            raise ImageBuildError(f"debootstrap failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        subprocess.run(["tar", "-C", str(root), "-cf", f"{tar}.tmp", "."], check=True)
        os.replace(f"{tar}.tmp", tar)
    digest = _digest_of(tar)
    stamp.write_text(digest)
    log(f"debootstrap {SUITE} minbase + {', '.join(PACKAGES)}: {time.monotonic() - started:.0f} s "
        f"({tar.stat().st_size / 1e6:.0f} MB, kept in {cache})")
    return tar, digest


def _label(image: str) -> str | None:
    done = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{DIGEST_LABEL}"}}}}', image,
                  check=False, timeout=30)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def base_image(cache: Path, mirror: str, log: Callable[[str], None]) -> str:
    """Import the root tar as BASE_IMAGE unless the engine already holds that very tar; returns its digest."""
    tar, digest = base_rootfs(cache, mirror, log)
    if _label(BASE_IMAGE) != digest:
        started = time.monotonic()
        docker("import", "--change", f"LABEL {DIGEST_LABEL}={digest}", "--change", "WORKDIR /", str(tar), BASE_IMAGE,
               timeout=600)
        log(f"docker import {BASE_IMAGE}: {time.monotonic() - started:.1f} s")
    return digest


def _repo_tar(repo: Path) -> tuple[bytes, str]:
    """The repository as a tar rooted at `testbed/` (owned by root), and a digest of its paths and contents."""
    buffer, sha = io.BytesIO(), hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "testbed"
        shutil.copytree(repo, clean, ignore=IGNORED)
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted([clean, *clean.rglob("*")]):
                rel = path.relative_to(clean.parent)
                info = tar.gettarinfo(path, arcname=str(rel))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                sha.update(str(rel).encode() + b"\0" + str(info.mode).encode() + b"\0")
                if path.is_file():
                    content = path.read_bytes()
                    sha.update(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    tar.addfile(info)
    return buffer.getvalue(), sha.hexdigest()


def sample_image(name: str, image: str, base_digest: str, log: Callable[[str], None]) -> bool:
    """Build one sample's image (base + /testbed) unless an identical one exists; True when it was built."""
    data, repo_digest = _repo_tar(SAMPLES / name / "repo")
    digest = hashlib.sha256(f"{base_digest}:{repo_digest}".encode()).hexdigest()
    if _label(image) == digest:
        return False
    started = time.monotonic()
    cid = docker("create", "--network", "none", "--label", f"{ROLE_LABEL}=image-build", "--label",
                 f"{OWNER_LABEL}={owner_label()}", BASE_IMAGE, "true").stdout.decode().strip()
    try:
        docker("cp", "-", f"{cid}:/", stdin=data)
        docker("commit", "--change", "WORKDIR /testbed", "--change", 'CMD ["bash", "run_tests.sh"]',
               "--change", f"LABEL {DIGEST_LABEL}={digest}", "--change", f"LABEL art.r2e.sample={name}", cid, image)
    finally:
        docker("rm", "-f", cid, check=False)
    log(f"built {image}: {time.monotonic() - started:.1f} s")
    return True


def build_sample_images(cache: Path | None = None, rows_out: Path | None = None, mirror: str = DEFAULT_MIRROR,
                        log: Callable[[str], None] = print) -> Path:
    """Base image and one image per bundled sample (each only when missing or changed); writes the sample rows
    (with their image names) to `rows_out` (default: `<cache>/sample_rows.jsonl`) and returns that path."""
    cache = cache or default_image_cache()
    started = time.monotonic()
    base_digest = base_image(cache, mirror, log)
    rows = sample_rows()
    built = sum(sample_image(row.repo_name, row.docker_image, base_digest, log) for row in rows)
    missing = [row.docker_image for row in rows if not image_exists(row.docker_image)]
    if missing:
        raise ImageBuildError(f"images missing after the build: {', '.join(missing)}")
    rows_out = rows_out or cache / "sample_rows.jsonl"
    rows_out.parent.mkdir(parents=True, exist_ok=True)
    rows_out.write_text("".join(json.dumps(row.model_dump()) + "\n" for row in rows))
    log(f"{len(rows)} sample image(s) ({built} built, {len(rows) - built} up to date) in "
        f"{time.monotonic() - started:.1f} s; rows with their images: {rows_out}")
    return rows_out
