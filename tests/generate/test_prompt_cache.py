"""The prompt cache (issue 33, item 4): a kept prompt gives exactly what reading it gives."""

import numpy as np
import pytest
import torch
from test_sampler import make_sampler

from chargen.generate.prompt_cache import PromptCache


def _host(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_a_kept_prompt_gives_exactly_what_reading_it_gives(backend, cell):
    s = make_sampler(cell, backend=backend)
    cache = PromptCache(s._prime, s.runtime.repeat, entries=4, min_chars=8)
    prompt = s.encode("the quick brown fox, and then some")
    want_logits, want_state = s._prime(prompt, 3)
    for hits in (0, 1, 2):  # read, then kept twice
        logits, state = cache.prime(prompt, 3)
        assert (cache.hits, cache.misses) == (hits, 1)
        assert np.array_equal(_host(logits), _host(want_logits))
        for a, b in zip([x for layer in state for x in layer], [x for layer in want_state for x in layer]):
            assert np.array_equal(_host(a), _host(b))
    logits[0, 0] = 1e9  # the rows handed out are copies: the kept one is untouched
    assert np.array_equal(_host(cache.prime(prompt, 1)[0]), _host(want_logits[:1]))


def test_the_least_recently_used_prompt_leaves_first_and_short_ones_are_not_kept():
    s = make_sampler(backend="numpy")
    cache = PromptCache(s._prime, s.runtime.repeat, entries=2, min_chars=8)
    a, b, c = (s.encode(t * 3) for t in ("aaaa", "bbbb", "cccc"))
    cache.prime(a, 1)
    cache.prime(b, 1)
    cache.prime(a, 1)  # a is now the most recent
    cache.prime(c, 1)  # b leaves
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)
    cache.prime(a, 1)
    cache.prime(b, 1)
    assert (cache.hits, cache.misses) == (2, 4)
    cache.prime(s.encode("short"), 1)
    assert len(cache) == 2 and (cache.hits, cache.misses) == (2, 4)  # neither counted nor kept
    off = PromptCache(s._prime, s.runtime.repeat, entries=0)
    off.prime(a, 1)
    assert len(off) == 0
