"""A local checkpoint behind an OpenAI-compatible endpoint: `transformers serve <folder>` (transformers' own
server) on a free 127.0.0.1 port, up while the `with` block runs and stopped after it, on error or Ctrl-C too."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agents.errors import InputError


def check_checkpoint(path: str) -> Path:
    """The folder of a Hugging Face checkpoint, or InputError naming what is missing."""
    folder = Path(path).expanduser()
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} is not a model folder ({', '.join(missing)} missing): set target.path to an "
                         f"`hf/` export (e.g. data/train/tiny_1k/hf) or a model folder saved with save_pretrained")
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with_parent() -> None:
    """In the server's process, before exec: on Linux, be sent SIGTERM when the thread that started it dies
    (the evaluation's main thread: so however the evaluation dies, SIGKILL included)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def serve_checkpoint(path: str, device: str = "auto", startup_timeout: float = 600.0,
                     extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Start `transformers serve` for the checkpoint, wait for `/health`, yield the base URL (ending in /v1),
    then stop the server and everything it started."""
    folder = check_checkpoint(path)
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="transformers-serve-", suffix=".log", delete=False)
    cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
           "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", device, *extra_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read()[-2000:]
                why = f"exited with {proc.returncode}" if proc.returncode is not None else \
                    f"was not healthy after {startup_timeout:.0f}s"
                raise InputError(f"`transformers serve {folder}` {why} (is the `serving` extra installed?):\n{tail}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        os.unlink(log.name)
