"""Batch layouts: targets are next characters everywhere, streams continue, ranks partition."""

import numpy as np
import pytest
import torch

from chargen import ChargenError, RandomWindows, StatefulStreams


def ramp(n: int) -> np.ndarray:
    """ids whose value is their own position (mod 2**16), so positions are checkable."""
    return (np.arange(n) % 65536).astype(np.uint16)


@pytest.mark.parametrize("n,B,T", [(1000, 4, 7), (64 * 10 + 1, 8, 10), (5001, 3, 50)])
def test_every_target_is_the_next_character(n, B, T):
    ids = ramp(n)
    streams = StatefulStreams(ids, B, T)
    S = (n - 1) // B
    assert len(streams) == S // T
    for step in range(len(streams)):
        x, y, starts = streams.get(step)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
        assert starts == (step == 0)
        assert torch.equal(y, x + 1)  # at every position
        # row b reads stream b: starting at b*S + step*T
        expected = torch.arange(B)[:, None] * S + step * T + torch.arange(T)
        assert torch.equal(x, expected)


def test_consecutive_batches_continue_every_stream():
    ids = ramp(4001)
    streams = StatefulStreams(ids, 5, 16)
    whole = torch.cat([streams.get(k)[0] for k in range(len(streams))], dim=1)  # (B, nT)
    for b in range(5):
        row = whole[b]
        assert torch.equal(row[1:] - row[:-1], torch.ones(row.numel() - 1, dtype=torch.int64))


def test_epochs_restart_streams():
    streams = StatefulStreams(ramp(1001), 4, 10)
    n = len(streams)
    x0, _, s0 = streams.get(0)
    xn, _, sn = streams.get(n)
    _, _, mid = streams.get(n + 1)
    assert s0 and sn and not mid and torch.equal(x0, xn)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_ranks_cover_every_stream_exactly_once(world):
    ids = ramp(8 * 40 + 1)
    full = StatefulStreams(ids, 8, 5)
    parts = [StatefulStreams(ids, 8, 5, rank=r, world_size=world) for r in range(world)]
    for step in range(len(full)):
        rows = torch.cat([p.get(step)[0] for p in parts])
        assert torch.equal(rows, full.get(step)[0])
    assert [p.rows for p in parts] == [slice(r * 8 // world, (r + 1) * 8 // world) for r in range(world)]


class Reads:
    """Ids that record every slice read from them."""

    def __init__(self, ids):
        self.ids, self.reads = ids, []

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        self.reads.append(len(range(*index.indices(len(self.ids)))))
        return self.ids[index]


@pytest.mark.parametrize("layout", [StatefulStreams, RandomWindows])
def test_batches_read_only_their_own_ids(tmp_path, layout):
    from chargen.data.prepared import IdsReader

    path = tmp_path / "ids.bin"
    ramp(100_001).astype(np.uint16).tofile(path)
    ids = Reads(IdsReader(path, np.uint16, 0, 100_001))
    batches = layout(ids, 4, 25)
    assert ids.reads == []  # nothing is read up front
    for step in range(5):
        x, y, _ = batches.get(step)
        assert torch.equal(y, x + 1) and x.shape == (4, 25)
    assert ids.reads == [26] * 20  # one row of T + 1 ids per stream per step, never the split


def test_random_windows_targets_and_determinism():
    ids = ramp(5000)
    rw = RandomWindows(ids, 6, 32, seed=7)
    for step in range(20):
        x, y, starts = rw.get(step)
        assert starts and x.shape == (6, 32)
        assert torch.equal(y, x + 1)
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(6, 31, dtype=torch.int64))
        assert int(x.max()) + 1 <= 4999
    again = RandomWindows(ids, 6, 32, seed=7)
    assert torch.equal(again.get(5)[0], rw.get(5)[0])
    other = RandomWindows(ids, 6, 32, seed=8)
    assert not torch.equal(other.get(5)[0], rw.get(5)[0])


def test_random_windows_ranks_split_one_global_batch():
    ids = ramp(3000)
    full = RandomWindows(ids, 8, 10, seed=1)
    parts = [RandomWindows(ids, 8, 10, seed=1, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat([p.get(3)[0] for p in parts]), full.get(3)[0])


def test_too_short_for_one_batch_says_how_much_is_needed():
    with pytest.raises(ChargenError, match=r"1,000 characters, but batch size 64 x bptt 128 needs at least 8,193"):
        StatefulStreams(ramp(1000), 64, 128)
    with pytest.raises(ChargenError, match="bptt 2000 needs at least 2,001"):
        RandomWindows(ramp(1000), 4, 2000)
    with pytest.raises(ChargenError, match="multiple of the 3 processes"):
        StatefulStreams(ramp(1000), 4, 10, world_size=3)


@pytest.mark.gpu
def test_batches_on_cuda_match_cpu():
    ids = ramp(20001)
    cpu = StatefulStreams(ids, 8, 32)
    gpu = StatefulStreams(ids, 8, 32, device="cuda")
    rw_cpu, rw_gpu = RandomWindows(ids, 8, 32, seed=3), RandomWindows(ids, 8, 32, seed=3, device="cuda")
    for step in (0, 5, len(cpu) - 1):
        assert torch.equal(gpu.get(step)[0].cpu(), cpu.get(step)[0])
        assert gpu.get(step)[0].device.type == "cuda"
        assert torch.equal(rw_gpu.get(step)[1].cpu(), rw_cpu.get(step)[1])
