"""`strop serve` looks after what it starts: a worker that dies is restarted, and when serve itself
is killed (-9) its worker and its embedded Redis do not stay behind."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import redis
from conftest import free_port, serve_env, start_serve, stop_serve


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _until(cond, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _worker_of(serve: int) -> int:
    """The live worker process `strop serve` started (waiting up to a minute for it)."""
    def workers() -> list[int]:
        return [c for c in _children(serve) if " worker " in _cmdline(c) and _alive(c)]

    assert _until(lambda: bool(workers()), 60), [(c, _cmdline(c)) for c in _children(serve)]
    return workers()[0]


def _redis_pid(log: Path) -> int:
    url = re.search(r"embedded redis at (\S+)", log.read_text()).group(1)
    return int(redis.Redis.from_url(url).info("server")["process_id"])


def test_a_dead_worker_is_restarted_and_readyz_says_so(tmp_path: Path, tiny_encoder_path: str) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    p = start_serve(tmp_path / "data", port, serve_env(tiny_encoder_path), log)
    url = f"http://127.0.0.1:{port}"
    try:
        first = _worker_of(p.pid)
        assert httpx.get(url + "/readyz", timeout=10).json()["checks"]["worker"] == "ok"
        os.kill(first, signal.SIGKILL)
        assert _until(lambda: any(" worker " in _cmdline(c) and c != first and _alive(c) for c in _children(p.pid)), 90)
        assert _until(lambda: "restarted 1" in httpx.get(url + "/readyz", timeout=10).json()["checks"]["worker"], 30)
        # the restarted worker takes jobs
        assert httpx.post(url + "/collections", json={"name": "t"}, timeout=60).status_code == 201
        docs = [{"id": str(i), "text": f"note number {i} about rivers"} for i in range(8)]
        assert httpx.put(url + "/collections/t/documents", json={"documents": docs}, timeout=60).status_code == 200
        job = {"train": {"pairs": [{"query": f"river {i}", "positive_id": str(i)} for i in range(8)]},
               "max_steps": 1, "gate": {"min_delta": -1.0, "min_pairs": 1}}
        job_id = httpx.post(url + "/collections/t/jobs", json=job, timeout=60).json()["job_id"]
        assert _until(lambda: httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()["state"] in
                      ("succeeded", "rejected"), 300), httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
    finally:
        stop_serve(p)


def test_kill_9_of_serve_leaves_no_worker_or_redis_behind(tmp_path: Path, tiny_encoder_path: str) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    p = start_serve(tmp_path / "data", port, serve_env(tiny_encoder_path), log)
    try:
        worker = _worker_of(p.pid)
        redis_pid = _redis_pid(log)
        assert _alive(worker) and _alive(redis_pid)
    finally:
        p.kill()  # SIGKILL to the serve process alone, as `kill -9 <pid>` does
        p.wait(30)
    assert _until(lambda: not _alive(worker), 90), _cmdline(worker)
    assert _until(lambda: not _alive(redis_pid), 60), _cmdline(redis_pid)
