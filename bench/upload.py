"""`python -m bench.upload`: a 200 MB upload and download through local signed URLs.

The real app (every middleware, embedded PostgreSQL on a fresh database) serves on loopback;
an aiohttp client in the same process PUTs a body generated chunk by chunk to a signed URL,
then GETs it back. Beside it, on the same disk: `cp` of the stored file and `dd ...
conv=fsync` (Stepwell's local backend fsyncs before it answers), and `dd` reading it to
/dev/null for the download. Memory: the process's peak RSS above its RSS before each transfer
(the kernel's high-water mark is reset first), client and server together.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench.runs import postgres_server
from bench.stepwell_runner import JWT_SECRET, recreate_database, serve
from runtime.app import create_app
from runtime.config import Config
from runtime.keys import STORAGE
from runtime.storage.local import LocalStorage

DATABASE = "stepwell_bench_upload"
KEY = "bench/upload.bin"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Transfer:
    """One measured transfer: bytes moved, seconds, and peak RSS growth (None: unknown)."""

    label: str
    size_bytes: int
    seconds: float
    rss_growth_bytes: int | None = None

    @property
    def mb_per_s(self) -> float:
        return self.size_bytes / 1e6 / self.seconds


def median_of(runs: list[Transfer]) -> Transfer:
    """The median run's time, with the largest memory growth of all runs."""
    middle = sorted(runs, key=lambda t: t.seconds)[len(runs) // 2]
    growths = [t.rss_growth_bytes for t in runs if t.rss_growth_bytes is not None]
    return Transfer(middle.label, middle.size_bytes, middle.seconds, max(growths, default=None))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=200, help="body size in MiB (200)")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="client chunk in KiB (1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; median shown (3)")
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.chunk_kb < 1 or args.repeat < 1:
        parser.error("--size-mb, --chunk-kb and --repeat must be >= 1")
    return args


# --- memory ---------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux 4.0+); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def measured(label: str, size: int, transfer: Callable[[], AsyncIterator[int]]) -> Transfer:
    """Run `transfer` (yielding byte counts), timing it and tracking peak RSS growth."""
    can_reset = reset_peak_rss()
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    moved = 0
    async for count in transfer():
        moved += count
    seconds = time.perf_counter() - started
    if moved != size:
        raise RuntimeError(f"{label}: moved {moved} bytes, expected {size}")
    growth = (_status_kib("VmHWM") - before) * 1024 if can_reset else None
    return Transfer(label, size, seconds, growth)


# --- the body -------------------------------------------------------------------------------


def pattern(chunk: int) -> bytes:
    """One chunk of incompressible bytes, repeated for the whole body."""
    return hashlib.shake_256(b"stepwell-bench").digest(chunk)


async def generated(size: int, chunk: bytes) -> AsyncIterator[bytes]:
    """`size` bytes, produced a chunk at a time: the body never exists whole."""
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        sent += len(piece)
        yield piece


def expected_sha256(size: int, chunk: bytes) -> str:
    digest = hashlib.sha256()
    for start in range(0, size, len(chunk)):
        digest.update(chunk[: size - start])
    return digest.hexdigest()


# --- the transfers --------------------------------------------------------------------------


def local_path(url: str) -> str:
    """A signed URL's path and query (its host is the configured public URL)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def upload(
    session: aiohttp.ClientSession, base: str, storage: LocalStorage, size: int, chunk: bytes
) -> AsyncIterator[int]:
    url = base + local_path(await storage.signed_url(KEY, "PUT", 600))
    async with session.put(url, data=generated(size, chunk)) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"upload failed: {resp.status} {body}")
    if body["data"]["sha256"] != expected_sha256(size, chunk):
        raise RuntimeError("the stored object's SHA-256 differs from the body sent")
    yield int(body["data"]["size_bytes"])


async def download(
    session: aiohttp.ClientSession, base: str, storage: LocalStorage, chunk_bytes: int
) -> AsyncIterator[int]:
    url = base + local_path(await storage.signed_url(KEY, "GET", 600))
    async with session.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"download failed: {resp.status} {await resp.text()}")
        async for piece in resp.content.iter_chunked(chunk_bytes):
            yield len(piece)


async def measure_stepwell(
    database_url: str, data_dir: Path, args: argparse.Namespace
) -> tuple[list[Transfer], Path]:
    """Upload then download through the app; the figures and the stored file."""
    size, chunk = args.size_mb * MIB, pattern(args.chunk_kb * 1024)
    config = Config(
        database_url=database_url, data_dir=data_dir, jwt_secret=JWT_SECRET, node_id="bench"
    )
    app = create_app(config)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        storage = app[STORAGE]
        if not isinstance(storage, LocalStorage):
            raise RuntimeError("the benchmark measures the local backend: unset STEPWELL_STORAGE")
        puts, gets = [], []
        for _ in range(args.repeat):
            puts.append(
                await measured(
                    "Stepwell: signed PUT",
                    size,
                    lambda: upload(session, base, storage, size, chunk),
                )
            )
            gets.append(
                await measured(
                    "Stepwell: signed GET",
                    size,
                    lambda: download(session, base, storage, len(chunk)),
                )
            )
        return [median_of(puts), median_of(gets)], storage.path(KEY)


# --- the peers, on the same disk ------------------------------------------------------------


def timed_command(label: str, size: int, command: list[str]) -> Transfer:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603 - fixed tools
    return Transfer(label, size, time.perf_counter() - started)


def measure_peers(stored: Path, size: int, repeat: int) -> list[Transfer]:
    """cp (page cache, no fsync), dd with fsync, and dd reading to /dev/null; medians."""
    cp, dd = shutil.which("cp"), shutil.which("dd")
    if cp is None or dd is None:
        raise RuntimeError("cp and dd are needed for the peer figures")
    copy = stored.with_name("peer-copy.bin")
    try:
        commands = {
            "cp (no fsync)": [cp, str(stored), str(copy)],
            "dd bs=1M conv=fsync": [dd, f"if={stored}", f"of={copy}", "bs=1M", "conv=fsync"],
            "dd bs=1M to /dev/null": [dd, f"if={stored}", "of=/dev/null", "bs=1M"],
        }
        return [
            median_of([timed_command(label, size, command) for _ in range(repeat)])
            for label, command in commands.items()
        ]
    finally:
        copy.unlink(missing_ok=True)


# --- the report -----------------------------------------------------------------------------


def render(transfers: list[Transfer]) -> str:
    """A plain-text table: transfer | MB/s | seconds | peak RSS growth."""
    rows = [["transfer", "MB/s", "seconds", "peak RSS growth"]]
    for t in transfers:
        growth = "-" if t.rss_growth_bytes is None else f"{t.rss_growth_bytes / MIB:.1f} MiB"
        rows.append([t.label, f"{t.mb_per_s:,.0f}", f"{t.seconds:.2f}", growth])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        " | ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    size = args.size_mb * MIB
    with (
        postgres_server() as server_url,
        tempfile.TemporaryDirectory(prefix="stepwell-bench-upload-") as tmp,
    ):
        database_url = asyncio.run(recreate_database(server_url, DATABASE))
        ours, stored = asyncio.run(measure_stepwell(database_url, Path(tmp), args))
        peers = measure_peers(stored, size, args.repeat)
    header = (
        f"{args.size_mb} MiB body in {args.chunk_kb} KiB chunks, client and server in one "
        f"process; storage and peers under {tempfile.gettempdir()}; median of {args.repeat} "
        f"runs (RSS: the largest); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    return f"{header}\n\n{render([*ours, *peers])}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        report = run(args)
    except (RuntimeError, OSError, aiohttp.ClientError, subprocess.CalledProcessError) as exc:
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
