"""Load test of ``chargen serve``: continuous batching under 1, 8, 64 and 256 concurrent streaming clients.

Usage::

    python scripts/bench_serve.py                    # 2x256 LSTM, 200 characters per request, 3 rounds
    python scripts/bench_serve.py --clients 1 8 --chars 100 --rounds 2
    python scripts/bench_serve.py --device cuda      # the model on a GPU (torch backend)

Trains a 2x256 LSTM for a few steps (its speed, not its quality, matters
here), starts ``chargen serve`` on it as a separate process on 127.0.0.1, and
drives it with streaming completions from ``--clients`` concurrent clients,
each asking for ``--chars`` characters with its own seed. It prints, as the
median of ``--rounds`` rounds: aggregate characters/s, per-client
characters/s, and p50/p99 time to first character; beside them, the baseline
measured in this run: ``Sampler.generate`` alone (one stream, in process).
Everything stays on 127.0.0.1, bounded in clients and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_run(folder: Path) -> Path:
    run = folder / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "chargen",
            "train",
            "--out",
            str(run),
            "--cell",
            "lstm",
            "--layers",
            "2",
            "--hidden",
            "256",
            "--max-steps",
            "20",
            "--preview-chars",
            "0",
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    return run


BACKEND = "torch"  # what the server decodes on (--backend); the same for the decoding process measured alone


def load(run: Path, device: str):
    from chargen import Sampler

    return Sampler.load(run, device=device, backend=BACKEND)


def batcher_alone(run: Path, clients: int, chars: int, rounds: int, device: str) -> float:
    """Aggregate chars/s of the same requests through the server's decoding process alone, without HTTP."""
    from chargen.serve.process_batcher import ProcessBatcher

    batcher = ProcessBatcher(load(run, device))
    rates = []
    try:
        for r in range(rounds):
            t = time.perf_counter()
            requests = [
                batcher.submit("the ", length=chars, seed=1000 * r + i, temperature=0.8) for i in range(clients)
            ]
            for request in requests:
                request.texts(timeout=300)
            rates.append(clients * chars / (time.perf_counter() - t))
    finally:
        batcher.close()
    return statistics.median(rates)


def baseline(run: Path, chars: int, rounds: int, device: str) -> float:
    s = load(run, device)
    s.generate("the ", length=50, seed=0)
    rates = []
    for r in range(rounds):
        t = time.perf_counter()
        s.generate("the ", length=chars * 2, seed=r, temperature=0.8)
        rates.append(chars * 2 / (time.perf_counter() - t))
    return statistics.median(rates)


async def one_client(client, url: str, chars: int, seed: int) -> tuple[float, int, float]:
    """(time to first character, characters, seconds) of one streaming completion."""
    body = {"prompt": "the ", "max_tokens": chars, "temperature": 0.8, "seed": seed, "stream": True}
    start = time.perf_counter()
    first, count = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            text = json.loads(line[6:])["choices"][0]["text"]
            if text and first is None:
                first = time.perf_counter() - start
            count += len(text)
    return first, count, time.perf_counter() - start


async def round_of(url: str, clients: int, chars: int, seed: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, url, chars, seed + i) for i in range(clients)))
        wall = time.perf_counter() - start
    firsts = sorted(r[0] for r in results)
    total = sum(r[1] for r in results)
    assert total == clients * chars, (total, clients * chars)
    return {
        "aggregate": total / wall,
        "per_client": statistics.mean(r[1] / r[2] for r in results),
        "p50": firsts[len(firsts) // 2],
        "p99": firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--chars", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where the model decodes: cpu (default), cuda, cuda:1, mps")
    ap.add_argument("--backend", default="torch", choices=("torch", "numpy"), help="what decodes (default torch)")
    args = ap.parse_args()
    global BACKEND
    BACKEND = args.backend
    from chargen.errors import ChargenError
    from chargen.model.devices import resolve_device

    try:
        resolve_device(args.device)  # before the minute of training a run
    except ChargenError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    with tempfile.TemporaryDirectory(prefix="chargen-serve-") as tmp:
        os.environ.setdefault("CHARGEN_CACHE", str(Path(tmp) / "cache"))
        run = make_run(Path(tmp))
        base = baseline(run, args.chars, args.rounds, args.device)
        alone = {c: batcher_alone(run, c, args.chars, args.rounds, args.device) for c in args.clients}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "chargen", "serve", str(run), "--port", str(port), "--max-queued", "4096"]
            + ["--device", args.device, "--backend", args.backend],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            import httpx

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            print(
                f"chargen serve, 2x256 LSTM, {args.chars} characters per request, median of {args.rounds} "
                f"rounds; {os.cpu_count()} CPUs; device {args.device}, backend {args.backend}"
            )
            print(f"baseline: Sampler.generate alone, one stream: {base:,.0f} chars/s\n")
            print(
                "| clients | aggregate chars/s | per-client chars/s | p50 first char | p99 first char | "
                "decoding process alone, no HTTP |"
            )
            print("|---|---|---|---|---|---|")
            rows = {}
            for c in args.clients:
                asyncio.run(round_of(url, min(c, 4), 20, 10**6))  # warm the server's paths
                rounds = [asyncio.run(round_of(url, c, args.chars, 1000 * r)) for r in range(args.rounds)]
                row = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
                rows[c] = row
                print(
                    f"| {c} | {row['aggregate']:,.0f} | {row['per_client']:,.0f} | {row['p50'] * 1000:.0f} ms | "
                    f"{row['p99'] * 1000:.0f} ms | {alone[c]:,.0f} |",
                    flush=True,
                )
            if 1 in rows and 64 in rows:
                print(
                    f"\n64 clients against one: {rows[64]['aggregate'] / rows[1]['aggregate']:.1f}x aggregate "
                    f"(target >= 12x); the decoding process alone: {alone[64] / alone[1]:.1f}x"
                )
            if 8 in rows:
                print(f"p50 time to first character at 8 clients: {rows[8]['p50'] * 1000:.0f} ms (target < 100 ms)")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
