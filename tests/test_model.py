"""The TTT-E2E model: configs, equivalence with the reference model and with a naive restatement of the spec (float64,
second-order gradients), the inner loop's semantics, inference (prefill / decode / generate), the official parameter
layout, and a finite-difference check that the outer gradient is really second order."""

import dataclasses
import io
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_model import naive_meta_loss, reference_copy

from ttt_kernels.model import TTTE2EConfig, TTTE2EModel
from ttt_kernels.model.model import _Recompute
from ttt_kernels.op_counter import OpCounter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are tiny: one thread is faster than two, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**overrides) -> TTTE2EConfig:
    """The tiny preset shrunk for tests: b = 16, window 32 (two chunks), 2 suffix blocks (so the inner gradient flows
    through a later suffix block's attention: the double-backward path)."""
    return TTTE2EConfig.preset("tiny", **{"window": 32, "mini_batch_size": 16, "num_suffix_layers": 2, **overrides})


def _model(config: TTTE2EConfig, seed: int = 0, ops: str = "package") -> TTTE2EModel:
    torch.manual_seed(seed)
    model = TTTE2EModel(config, ops=ops).double()
    with torch.no_grad():  # non-trivial norm weights, so that every norm's gradient is exercised
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.mul_(1 + 0.1 * torch.randn_like(p))
    return model


def _tokens(batch: int, length: int, seed: int, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(model: TTTE2EModel, tokens: torch.Tensor, **kwargs):
    model.zero_grad(set_to_none=True)
    loss, per_chunk = model.meta_loss(tokens, **kwargs)
    loss.backward()
    return loss.detach(), per_chunk.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_close(actual, expected, what: str, rtol: float = 1e-6) -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_close(actual[key], expected[key], f"{what}[{key}]", rtol)
        return
    err = ((actual - expected).norm() / expected.norm().clamp(min=1e-300)).item()
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


# ---------------------------------------------------------------------------------------------------------------------
# Config


def test_presets():
    sizes = {
        "125m": (12, 768, 12, 64, 1664, 3),
        "350m": (24, 1024, 16, 64, 2304, 6),
        "760m": (24, 1536, 16, 96, 3328, 6),
        "1b": (24, 2048, 32, 64, 4352, 6),
        "3b": (32, 2560, 32, 80, 5632, 8),
    }
    for name, (layers, d, heads, hd, m, suffix) in sizes.items():
        c = TTTE2EConfig.preset(name)
        assert (c.num_layers, c.hidden_size, c.num_heads, c.head_dim, c.mlp_size, c.num_suffix_layers) == (
            layers,
            d,
            heads,
            hd,
            m,
            suffix,
        )
        assert (c.vocab_size, c.window, c.mini_batch_size, c.rope_theta) == (128256, 8192, 1024, 500000.0)
        assert c.bos_token_id == 128000 and c.ttt and c.inner_max_norm == 1.0
    tiny, small = TTTE2EConfig.preset("tiny"), TTTE2EConfig.preset("small")
    assert (
        tiny.num_layers,
        tiny.hidden_size,
        tiny.num_heads,
        tiny.head_dim,
        tiny.mlp_size,
        tiny.num_suffix_layers,
        tiny.window,
        tiny.mini_batch_size,
        tiny.vocab_size,
    ) == (4, 128, 2, 64, 288, 1, 256, 64, 256)
    assert (
        small.num_layers,
        small.hidden_size,
        small.num_heads,
        small.mlp_size,
        small.num_suffix_layers,
        small.window,
        small.mini_batch_size,
        small.vocab_size,
    ) == (8, 256, 4, 576, 2, 512, 128, 256)
    assert TTTE2EConfig.preset("tiny", ttt=False, window=4096).window == 4096
    with pytest.raises(ValueError, match="unknown preset"):
        TTTE2EConfig.preset("7b")
    with pytest.raises(ValueError, match="unknown fields"):
        TTTE2EConfig.preset("tiny", hidden=3)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(window=32, mini_batch_size=64), "window .* must be >= mini_batch_size"),
        (dict(hidden_size=129), "divisible by num_heads"),
        (dict(hidden_size=126), "must be even"),
        (dict(num_suffix_layers=5), "must not exceed num_layers"),
        (dict(num_suffix_layers=0), "num_suffix_layers must be an int >= 1"),
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(bos_token_id=256), "bos_token_id"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(inner_max_norm=float("inf")), "inner_max_norm"),
        (dict(mlp_size=2.5), "mlp_size must be an int"),
        (dict(ttt=1), "ttt must be a bool"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        TTTE2EConfig.preset("tiny", **overrides)


def test_config_json_round_trip():
    c = TTTE2EConfig.preset("125m", num_kv_heads=4, ttt=False)
    assert TTTE2EConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="unknown fields"):
        TTTE2EConfig.from_dict({**c.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="missing fields"):
        TTTE2EConfig.from_dict({"vocab_size": 3})


# ---------------------------------------------------------------------------------------------------------------------
# Equivalence with the reference model and the naive spec


_GROUPED = dict(checkpoint=True, checkpoint_group=2, checkpoint_prefix_group=1)


@pytest.mark.parametrize("kept", [0, 1, 2, 4])
def test_auto_checkpointing_matches_reference_model(monkeypatch, kept):
    """checkpoint="auto" with k of the last chunks keeping their graphs (the rest recomputed) gives the reference's
    losses and gradients for every split."""
    monkeypatch.setattr(TTTE2EModel, "_kept_chunks", staticmethod(lambda n, *sizes: kept))
    recomputed = []  # the chunks run as a _Recompute in the forward (prefix slices are runs of _slice_runner)
    apply = _Recompute.apply
    monkeypatch.setattr(
        _Recompute, "apply", lambda run, *a: recomputed.append("_segment_runner" in run.__qualname__) or apply(run, *a)
    )
    model = _model(_config(bos_token_id=7), seed=kept)
    tokens = _tokens(2, 5 * 16 + 1, kept)
    loss, per_chunk, grads = _loss_and_grads(model, tokens)
    assert sum(recomputed) == 4 - kept  # chunk 0 and the last `kept` chunks keep their graphs
    assert len(recomputed) > sum(recomputed)  # the first call recomputes the prefix slices before the last
    ref_loss, ref_per_chunk, ref_grads = _loss_and_grads(reference_copy(model), tokens, checkpoint=False)
    _assert_close(per_chunk, ref_per_chunk, "per-chunk losses")
    _assert_close(grads, ref_grads, "grad")
    # The next call has measured the prefix slices' graphs: they fit the floor and keep their graphs.
    recomputed.clear()
    _, again_per_chunk, again_grads = _loss_and_grads(model, tokens)
    assert len(recomputed) == sum(recomputed) == 4 - kept
    _assert_close(again_per_chunk, ref_per_chunk, "per-chunk losses, prefix kept")
    _assert_close(again_grads, ref_grads, "grad, prefix kept")


@pytest.mark.parametrize(
    "seed, n_chunks, checkpointing",
    [(0, 4, {}), (1, 1, {}), (2, 3, _GROUPED), (3, 5, _GROUPED), (4, 4, dict(checkpoint_prefix=False))],
    ids=["4-chunks", "1-chunk", "3-chunks-grouped", "5-chunks-grouped", "4-chunks-whole-prefix"],
)
def test_matches_reference_model(seed, n_chunks, checkpointing):
    """Package ops + checkpointing through time vs the same code on reference ops with plain autograd."""
    model = _model(_config(bos_token_id=7), seed)
    tokens = _tokens(2, n_chunks * 16 + 1, seed)
    tokens[0, 5] = tokens[1, 17:20] = 7  # BOS targets, masked
    loss, per_chunk, grads = _loss_and_grads(model, tokens, **checkpointing)
    ref_loss, ref_per_chunk, ref_grads = _loss_and_grads(reference_copy(model), tokens, checkpoint=False)
    assert per_chunk.shape == (2, n_chunks)
    _assert_close(per_chunk, ref_per_chunk, "per-chunk losses")
    _assert_close(loss, ref_loss, "loss")
    _assert_close(grads, ref_grads, "grad")
    with torch.no_grad():  # evaluation without an outer graph gives the same losses
        _assert_close(model.meta_loss(tokens)[1], ref_per_chunk, "per-chunk losses under no_grad")


@pytest.mark.parametrize(
    "overrides",
    [dict(bos_token_id=7), dict(window=24, num_kv_heads=1), dict(window=16, rope_float32_angles=False)],
    ids=["bos", "window24-gqa", "window16-exact-rope"],
)
def test_matches_naive_spec(overrides):
    """The chunked inner loop with KV caches vs full-sequence recomputation per chunk (tests/reference_model.py)."""
    model = _model(_config(**overrides), seed=4)
    tokens = _tokens(2, 4 * 16 + 1, seed=5)
    tokens[0, 16] = tokens[1, 30:34] = 7
    loss, per_chunk, grads = _loss_and_grads(model, tokens)
    model.zero_grad(set_to_none=True)
    naive_loss, naive_per_chunk, _ = naive_meta_loss(model, tokens)
    naive_loss.backward()
    _assert_close(per_chunk, naive_per_chunk.detach(), "per-chunk losses")
    _assert_close(grads, {n: p.grad for n, p in model.named_parameters()}, "grad")


@pytest.mark.parametrize(
    "overrides, n_chunks, group, extra",
    [
        (dict(), 5, 1, {}),  # slices of 16 < window - 1: a slice reads the tails of the two before it
        (dict(window=24, num_kv_heads=1), 7, 1, {}),  # window not a multiple of b, GQA
        (dict(window=16), 7, 3, {}),  # slices of 48 > window: tails of 15 positions; a shorter last slice
        (
            dict(window=40, num_kv_heads=1, num_suffix_layers=1),
            9,
            2,
            dict(checkpoint=True, checkpoint_group=2),
        ),  # T = 144, 3 prefix
        (dict(bos_token_id=7), 3, 8, {}),  # one slice
        (dict(), 4, 1, dict(first_order=True)),
        (dict(ttt=False, window=24), 7, 2, {}),  # the SWA baseline: every block in slices
        (dict(ttt=False, window=200), 6, 1, {}),  # full attention (window > T)
    ],
    ids=["b16-w32", "w24-gqa", "w16-slice48", "w40-3prefix-grouped", "one-slice", "first-order", "swa", "full"],
)
def test_prefix_slices_match_whole_prefix(overrides, n_chunks, group, extra):
    """Prefix blocks in recomputed slices vs over the whole sequence in one pass: the same losses and gradients
    (float64, to rounding) for every parameter, across windows smaller and larger than the slices."""
    model = _model(_config(**overrides), seed=n_chunks)
    tokens = _tokens(2, n_chunks * 16 + 1, seed=n_chunks)
    tokens[1, 9] = 7
    loss, per_chunk, grads = _loss_and_grads(
        model, tokens, checkpoint_prefix=True, checkpoint_prefix_group=group, **extra
    )
    whole_loss, whole_per_chunk, whole_grads = _loss_and_grads(model, tokens, checkpoint_prefix=False, **extra)
    _assert_close(per_chunk, whole_per_chunk, "per-chunk losses", rtol=1e-12)
    _assert_close(loss, whole_loss, "loss", rtol=1e-12)
    _assert_close(grads, whole_grads, "grad", rtol=1e-12)


def test_prefix_slices_route_window_gradients(monkeypatch):
    """The gradient that reaches a slice through the next slices' attention to its keys/values is not negligible:
    detaching the window the next slices read changes the prefix blocks' gradients (so the test above would catch a
    dropped path)."""
    import ttt_kernels.model.model as model_module

    model = _model(_config())
    tokens = _tokens(1, 5 * 16 + 1, seed=1)
    _, _, grads = _loss_and_grads(model, tokens, checkpoint_prefix_group=1)
    window = model_module._window
    monkeypatch.setattr(
        model_module, "_window", lambda pieces, n: [(k.detach(), v.detach()) for k, v in window(pieces, n)]
    )
    _, _, cut = _loss_and_grads(model, tokens, checkpoint_prefix_group=1)
    for name in (
        "blocks.0.attn.wk.weight",
        "blocks.0.attn.wv.weight",
        "blocks.0.ffn.w2.weight",
        "blocks.1.attn.wk.weight",
        "embed.weight",
    ):
        err = ((cut[name] - grads[name]).norm() / grads[name].norm()).item()
        assert err > 1e-3, (name, err)


def test_meta_loss_argument_errors():
    model = _model(_config())
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        model.meta_loss(_tokens(1, 40, 0))
    with pytest.raises(ValueError, match="int64 tensor"):
        model.meta_loss(_tokens(1, 33, 0).double())
    with pytest.raises(ValueError, match="checkpoint_group"):
        model.meta_loss(_tokens(1, 33, 0), checkpoint_group=0)
    with pytest.raises(ValueError, match="checkpoint_group > 1 needs checkpoint=True"):
        model.meta_loss(_tokens(1, 33, 0), checkpoint_group=2)
    with pytest.raises(ValueError, match="checkpoint must be True, False or 'auto'"):
        model.meta_loss(_tokens(1, 33, 0), checkpoint="chunk")
    with pytest.raises(ValueError, match="checkpoint_prefix_group"):
        model.meta_loss(_tokens(1, 33, 0), checkpoint_prefix_group=0)
    with pytest.raises(ValueError, match="ops must be one of"):
        TTTE2EModel(_config(), ops="fast")
    for bad in (256, -1):  # checked without a host synchronization (asynchronously on a GPU)
        tokens = _tokens(1, 33, 0)
        tokens[0, 7] = bad
        for method, args in ((model.meta_loss, ()), (model.prefill, ()), (model.generate, (1,))):
            with pytest.raises(RuntimeError, match=r"token ids must be in \[0, vocab_size=256\)"):
                method(tokens, *args)
    with pytest.raises(ValueError, match=r"TTTE2EConfig.window must be < 2\^31"):
        _config(window=2**64)


@pytest.mark.parametrize("ops", ["package", "reference"])
def test_meta_loss_under_no_grad_every_checkpoint_mode(ops):
    """meta_loss under torch.no_grad (evaluation) and with grad give the same losses in every checkpointing mode;
    the inner steps run either way."""
    model = _model(_config(), ops=ops)
    tokens = _tokens(2, 65, 3)
    want_loss, want_chunks = model.meta_loss(tokens, checkpoint=False, checkpoint_prefix=False)
    for checkpoint in (True, False):
        for checkpoint_prefix in (True, False, None):
            kwargs = dict(checkpoint=checkpoint, checkpoint_prefix=checkpoint_prefix)
            with torch.no_grad():
                loss, chunks = model.meta_loss(tokens, **kwargs)
            assert not loss.requires_grad
            _assert_close(chunks, want_chunks.detach(), f"no_grad {kwargs}", 1e-12)
            loss, chunks = model.meta_loss(tokens, **kwargs)
            assert loss.requires_grad
            _assert_close(chunks.detach(), want_chunks.detach(), f"grad {kwargs}", 1e-12)
    # The inner steps ran: without them the later chunks' losses differ.
    no_ttt = _model(_config(ttt=False), ops=ops)
    no_ttt.load_state_dict(model.state_dict())
    with torch.no_grad():
        _, static_chunks = no_ttt.meta_loss(tokens)
    assert (static_chunks[:, 1:] - want_chunks[:, 1:].detach()).abs().max() > 1e-6


def test_no_host_synchronization():
    """meta_loss (forward and backward), prefill and decode never read a tensor's value on the host (no .item(),
    .tolist(), data-dependent branches): aten._local_scalar_dense is never called, so a GPU never waits. The op
    count per step does not depend on the batch size (beyond 1, where more slices happen to be contiguous)."""
    totals = {}
    for batch in (2, 5):
        model = _model(_config())  # its own RoPE table cache: the same hits and misses for both batch sizes
        tokens = _tokens(batch, 65, 4)
        model.meta_loss(tokens)[0].backward()  # warm-up
        state = model.prefill(tokens[:, :40])
        counts = {}
        for mode in (True, "auto"):  # "auto" keeps a number of chunk graphs that depends on the batch size
            with OpCounter() as ops:
                model.meta_loss(tokens, checkpoint=mode)[0].backward()
            counts[f"meta_loss {mode}"] = ops
        with OpCounter() as ops:
            model.prefill(tokens[:, 40:], state)
        counts["prefill"] = ops
        with OpCounter() as ops:
            for i in range(20):  # crosses an inner step
                model.decode(state, tokens[:, i])
        counts["decode"] = ops
        for what, ops in counts.items():
            assert ops.total > 100, what
            assert ops.counts["aten._local_scalar_dense"] == 0, what
        totals[batch] = {what: ops.total for what, ops in counts.items() if what != "meta_loss auto"}
    assert totals[2] == totals[5]


def _profiled_names(fn) -> set:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def test_phases_appear_in_a_profiler_trace():
    """The model's phases are named ranges of a torch.profiler trace (and NVTX ranges on CUDA: docs/profiling.md)."""
    model = _model(_config())
    tokens = _tokens(2, 6 * 16 + 1, seed=5)
    # Prefix slices of one chunk, every chunk recomputed: every phase of a meta step occurs.
    names = _profiled_names(lambda: model.meta_loss(tokens, checkpoint=True, checkpoint_prefix_group=1)[0].backward())
    expected = {"ttt.embedding", "ttt.prefix_slice 0", "ttt.prefix_slice 5", "ttt.chunk 0", "ttt.chunk 5"}
    assert expected | {"ttt.inner_step", "ttt.recompute"} <= names, sorted(n for n in names if n.startswith("ttt."))
    state = model.prefill(tokens[:, :40])
    names = _profiled_names(lambda: [model.prefill(tokens[:, 40:70], state), model.decode(state, tokens[:, 70])])
    assert {"ttt.prefill", "ttt.decode", "ttt.embedding", "ttt.prefix", "ttt.chunk 3", "ttt.inner_step"} <= names


def test_check_finite_is_opt_in():
    """A NaN parameter: by default the loss is NaN; with check_finite, meta_loss, prefill and decode fail naming it."""
    model = _model(_config())
    with torch.no_grad():
        model.blocks[0].ffn.w1.weight[0, 0] = float("nan")
    tokens = _tokens(1, 33, 0)
    assert torch.isnan(model.meta_loss(tokens)[0])
    model.check_finite = True
    with pytest.raises(RuntimeError, match="TTTE2EModel.meta_loss: non-finite loss"):
        model.meta_loss(tokens)
    with pytest.raises(RuntimeError, match="non-finite logits"):
        model.prefill(tokens)
    checked = TTTE2EModel(_config(), check_finite=True).double()
    state = checked.prefill(tokens)  # finite: no error
    checked.decode(state, tokens[:, 0])


def test_matches_reference_model_tiny_preset():
    """The tiny preset at full size (window 256, b 64, one suffix block) past the point where the window is full;
    prefix slices of 128 tokens (a slice reads the windows of the two before it)."""
    model = _model(TTTE2EConfig.preset("tiny"), seed=5)
    tokens = _tokens(1, 6 * 64 + 1, seed=5)
    loss, per_chunk, grads = _loss_and_grads(model, tokens, checkpoint_prefix_group=2)
    ref_loss, ref_per_chunk, ref_grads = _loss_and_grads(reference_copy(model), tokens, checkpoint=False)
    _assert_close(per_chunk, ref_per_chunk, "per-chunk losses")
    _assert_close(grads, ref_grads, "grad")


@pytest.mark.slow
def test_matches_reference_model_small_preset():
    """The small preset at full size (2 suffix blocks, window 512, b 128), 5 chunks, two sequences, prefix slices of
    256 tokens."""
    model = _model(TTTE2EConfig.preset("small", bos_token_id=0), seed=6)
    tokens = _tokens(2, 5 * 128 + 1, seed=6)
    tokens[1, 100:110] = 0
    loss, per_chunk, grads = _loss_and_grads(
        model, tokens, checkpoint=True, checkpoint_group=2, checkpoint_prefix_group=2
    )
    ref_loss, ref_per_chunk, ref_grads = _loss_and_grads(reference_copy(model), tokens, checkpoint=False)
    _assert_close(per_chunk, ref_per_chunk, "per-chunk losses")
    _assert_close(grads, ref_grads, "grad")


def _held_bytes(model: TTTE2EModel, tokens: torch.Tensor, **kwargs) -> int:
    """Bytes of the tensors (distinct storages, parameters excluded) the autograd graph holds after meta_loss."""
    refs = []

    def pack(t):
        refs.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model.meta_loss(tokens, **kwargs)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held = {}
    for ref in refs:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in params:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del loss
    return sum(held.values())


def _held_growth(model: TTTE2EModel, **kwargs) -> int:
    """Held bytes of 16 chunks of 16 tokens minus those of 8 chunks (what 128 more tokens cost)."""
    long, short = (_held_bytes(model, _tokens(1, n * 16 + 1, 0), **kwargs) for n in (16, 8))
    return long - short


def test_checkpointing_bounds_held_memory():
    """Per chunk, the graph keeps much less with checkpointing, less again with prefix slices, and less again with
    two levels."""
    model = _model(_config()).float()
    modes = {
        "none": dict(checkpoint=False, checkpoint_prefix=False),
        "chunk": dict(checkpoint=True, checkpoint_prefix=False),
        "chunk+prefix": dict(checkpoint=True),
        "group+prefix": dict(checkpoint=True, checkpoint_group=4),
    }
    growth = {name: _held_growth(model, **kw) for name, kw in modes.items()}
    fast_bytes = 8 * sum(w.numel() * 4 for w in model.initial_fast_weights(1))  # W_{i-1} of 8 chunks
    assert growth["chunk"] < 1.5 * fast_bytes and growth["none"] > 1.8 * growth["chunk"], growth
    # The prefix blocks' activations (2 blocks here) are no longer held: what remains is W_{i-1}, the embedding,
    # the prefix output, keys/values and the chunks' small tensors.
    assert growth["chunk+prefix"] < growth["chunk"] - 1.5e6 and growth["chunk+prefix"] < 1.25 * fast_bytes, growth
    assert growth["group+prefix"] * 2.5 < growth["chunk+prefix"], growth


def test_auto_checkpointing_holds_at_most_twice(monkeypatch):
    """checkpoint="auto" keeps the graphs of the last chunks within what recomputing every chunk holds (the
    64 MiB floor of that budget removed, so that it binds on these small problems), and all of them where they fit
    the floor: the chunks' from the first call, the prefix slices' once a call has measured them."""
    model = _model(_config()).float()
    recomputed = []
    apply = _Recompute.apply
    monkeypatch.setattr(_Recompute, "apply", lambda run, *a: recomputed.append(run.__qualname__) or apply(run, *a))
    for n_chunks in (4, 16, 64):
        tokens = _tokens(1, n_chunks * 16 + 1, 0)
        every = _held_bytes(model, tokens, checkpoint=False)
        if every < 60 << 20:  # fits the floor
            recomputed.clear()
            model.meta_loss(tokens)
            assert not any("_segment_runner" in r for r in recomputed), (n_chunks, recomputed)
            recomputed.clear()
            model.meta_loss(tokens)
            assert recomputed == [], (n_chunks, recomputed)
        with monkeypatch.context() as patch:
            patch.setattr("ttt_kernels.model.model._AUTO_MIN_BUDGET", 0)
            held = {mode: _held_bytes(model, tokens, checkpoint=mode) for mode in (True, "auto")}
        assert held[True] < held["auto"] <= 2 * held[True], (n_chunks, held)
        assert held["auto"] < every, (n_chunks, held)


def test_prefix_slices_bound_held_memory():
    """With TTT off (not sliced by default) and checkpoint_prefix, every block runs in prefix slices: per token,
    the graph holds a few [d]-sized vectors (the embedding, the window's keys/values, the loss's inputs) instead of
    every block's activations."""
    model = _model(_config(ttt=False)).float()
    whole, sliced = _held_growth(model), _held_growth(model, checkpoint_prefix=True)
    per_token = 128 * model.config.hidden_size * 4  # one [d] float32 vector per token, 128 tokens
    assert whole > 8 * sliced and sliced < 10 * per_token, (whole, sliced, per_token)


# ---------------------------------------------------------------------------------------------------------------------
# The inner loop


def _inner_grads_by_hand(model: TTTE2EModel, tokens: torch.Tensor):
    """Per sequence, the gradient of chunk 1's loss w.r.t. W_0 (all suffix blocks' w1, w3, w2), from the TTT-off
    network (W_0 as an ordinary parameter)."""
    off = TTTE2EModel(dataclasses.replace(model.config, ttt=False)).double()
    off.load_state_dict(model.state_dict())
    w0 = [w for blk in off.suffix_blocks for w in (blk.prime.w1.weight, blk.prime.w3.weight, blk.prime.w2.weight)]
    _, per_chunk = off.meta_loss(tokens)
    return [torch.autograd.grad(per_chunk[s, 0], w0, retain_graph=True) for s in range(tokens.shape[0])], w0


def test_first_inner_step_by_hand():
    """W_1 = W_0 - eta * clip(g_1): the clip is global over all suffix blocks and separate for each sequence."""
    model = _model(_config())
    b = model.config.mini_batch_size
    tokens = _tokens(2, b + 1, seed=6)
    tokens[1, ::2] = 5  # a more predictable sequence: another inner-gradient norm
    grads, w0 = _inner_grads_by_hand(model, tokens)
    norms = [torch.sqrt(sum(g.square().sum() for g in gs)).item() for gs in grads]
    assert abs(norms[0] - norms[1]) > 0.1 * max(norms)
    max_norm = (norms[0] * norms[1]) ** 0.5  # one sequence is clipped, the other is not
    model.config = dataclasses.replace(model.config, inner_max_norm=max_norm)
    eta = 0.7
    state = model.prefill(tokens, inner_lr=eta)
    assert state.pos == b + 1 and state.pending_tokens.shape == (2, 1)
    for s, gs in enumerate(grads):
        scale = min(1.0, max_norm / norms[s])
        expected = [w - eta * scale * g for w, g in zip(w0, gs)]
        for got, want in zip(state.fast, expected):
            torch.testing.assert_close(got[s], want, rtol=1e-10, atol=1e-14)
        # Clipping each suffix block separately would give another step (so the test tells them apart).
        per_block = [torch.sqrt(sum(g.square().sum() for g in gs[3 * j : 3 * j + 3])).item() for j in range(2)]
        if scale < 1:
            assert all(abs(min(1.0, max_norm / n) - scale) > 1e-3 for n in per_block)


def test_only_fast_weights_change_and_reset_per_sequence():
    model = _model(_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = _tokens(2, 4 * 16 + 1, seed=7)
    state = model.prefill(tokens)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed at test time"
    w0 = model.initial_fast_weights(2)
    assert all(not torch.equal(w, w_0) for w, w_0 in zip(state.fast, w0))
    assert all(w.dtype == torch.float64 for w in state.fast)  # fp32 (fp64 for this float64 model)
    # A new sequence starts from W_0: prefilling B after A gives B's fresh result.
    fresh = model.prefill(tokens[1:])
    again = model.prefill(tokens[1:])
    for w, w2 in zip(fresh.fast, again.fast):
        assert torch.equal(w, w2)
    # Each sequence of a batch has its own fast weights, gradient and clip norm: batch = sequences one at a time.
    _, per_chunk = model.meta_loss(tokens)
    for s in range(2):
        _, alone = model.meta_loss(tokens[s : s + 1])
        torch.testing.assert_close(per_chunk[s], alone[0], rtol=1e-12, atol=1e-12)


def test_chunk_predicted_with_previous_weights():
    """Chunk 1 uses W_0 whatever eta; with eta = 0 every chunk uses W_0 (the TTT-off network's losses)."""
    model = _model(_config())
    off = TTTE2EModel(dataclasses.replace(model.config, ttt=False)).double()
    off.load_state_dict(model.state_dict())
    tokens = _tokens(2, 3 * 16 + 1, seed=8)
    with torch.no_grad():
        _, off_chunks = off.meta_loss(tokens)
        _, ttt_chunks = model.meta_loss(tokens, inner_lr=1.0)
        _, frozen = model.meta_loss(tokens, inner_lr=0.0)
    torch.testing.assert_close(ttt_chunks[:, 0], off_chunks[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(frozen, off_chunks, rtol=1e-12, atol=1e-12)
    assert (ttt_chunks[:, 1:] - off_chunks[:, 1:]).abs().min() > 1e-6


def test_second_order_gradient_matches_finite_difference():
    """d(meta-loss)/d W_0 entry vs a central difference (float64), and the first-order variant is measurably off."""
    model = _model(_config())
    tokens = _tokens(2, 3 * 16 + 1, seed=9)
    w = model.suffix_blocks[0].prime.w1.weight
    idx = (3, 5)
    _, _, grads = _loss_and_grads(model, tokens)
    _, _, grads_first_order = _loss_and_grads(model, tokens, first_order=True)
    analytic, first_order = (
        grads["blocks.2.prime.w1.weight"][idx].item(),
        grads_first_order["blocks.2.prime.w1.weight"][idx].item(),
    )
    eps = 1e-4
    values = []
    for delta in (eps, -eps):
        with torch.no_grad():
            w[idx] += delta
            values.append(model.meta_loss(tokens)[0].item())
            w[idx] -= delta
    fd = (values[0] - values[1]) / (2 * eps)
    assert abs(analytic - fd) <= 1e-6 * abs(fd), (analytic, fd)
    assert abs(first_order - fd) > 1e-2 * abs(fd), (first_order, fd)


def test_bfloat16_model():
    """bfloat16 activations and weights, float32 fast weights and loss: close to the float32 model."""
    model = _model(_config()).float()
    tokens = _tokens(2, 3 * 16 + 1, seed=14)
    loss, per_chunk, grads = _loss_and_grads(model, tokens)
    model.bfloat16()
    loss16, per_chunk16, grads16 = _loss_and_grads(model, tokens)
    assert per_chunk16.dtype == torch.float32 and grads16["embed.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(per_chunk16, per_chunk, rtol=0, atol=2e-2)
    for k in grads:
        _assert_close(grads16[k].float(), grads[k], f"grad[{k}]", rtol=0.15)
    state = model.prefill(tokens)
    assert all(w.dtype == torch.float32 for w in state.fast) and state.logits.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------------
# Inference


def _chunk_losses_from_logits(model, logits, tokens):
    b = model.config.mini_batch_size
    targets = tokens[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    valid = targets != model.config.bos_token_id
    return (ce * valid).unflatten(1, (-1, b)).sum(2) / valid.unflatten(1, (-1, b)).sum(2)


@pytest.mark.parametrize(
    "overrides", [dict(), dict(ttt=False), dict(ttt=False, window=128)], ids=["ttt", "swa", "full-attention"]
)
def test_prefill_matches_decode_and_meta_loss(overrides):
    model = _model(_config(bos_token_id=7, **overrides))
    tokens = _tokens(2, 4 * 16 + 1, seed=10)
    tokens[1, 12] = 7
    state, logits = model.prefill(tokens, return_logits=True)
    assert logits.shape == (2, 65, 256) and logits.dtype == torch.float64
    # The training path's per-chunk losses are the inference path's.
    with torch.no_grad():
        _, per_chunk = model.meta_loss(tokens)
    torch.testing.assert_close(_chunk_losses_from_logits(model, logits, tokens), per_chunk, rtol=1e-12, atol=1e-12)
    # Token by token, and prefill in pieces continued by decode.
    decoded = model.new_state(2)
    step_logits = torch.stack([model.decode(decoded, tokens[:, i]) for i in range(tokens.shape[1])], 1)
    torch.testing.assert_close(step_logits, logits, rtol=1e-10, atol=1e-10)
    # Slices of the prompt (not multiples of b, and one token) read the same as one pass.
    for slice_tokens in (1, 23):
        sliced, sliced_logits = model.prefill(tokens, return_logits=True, slice_tokens=slice_tokens)
        torch.testing.assert_close(sliced_logits, logits, rtol=1e-10, atol=1e-10)
        assert sliced.pos == 65
    pieces, first = model.prefill(tokens[:, :21], return_logits=True)
    pieces, second = model.prefill(tokens[:, 21:50], pieces, return_logits=True)
    rest = torch.stack([model.decode(pieces, tokens[:, i]) for i in range(50, 65)], 1)
    torch.testing.assert_close(torch.cat((first, second, rest), 1), logits, rtol=1e-10, atol=1e-10)
    for other in (decoded, pieces):
        assert other.pos == state.pos == 65
        for w, w2 in zip(other.fast or (), state.fast or ()):
            torch.testing.assert_close(w, w2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("overrides", [dict(bos_token_id=7), dict(num_kv_heads=1, inner_max_norm=0.05)])
def test_explicit_chunk_step_matches_autograd(overrides):
    """The inference chunk step on the package's ops, its backward written out (model/chunk_step.py: no graph, only
    the fast weights' gradient), against the same step under autograd on the same ops: 2 suffix blocks (the gradient
    of the first crosses the second's attention), grouped-query attention, masked targets, clipped steps."""
    model = _model(_config(**overrides))
    tokens = _tokens(2, 5 * 16 + 3, seed=16)
    tokens[0, 20:30] = 7
    explicit, explicit_logits = model.prefill(tokens, return_logits=True)
    # The dispatch in _chunk_step is by op-set name: the same ops under another name run under autograd.
    model._opset = dataclasses.replace(model._opset, name="package (autograd)")
    autograd, autograd_logits = model.prefill(tokens, return_logits=True)
    torch.testing.assert_close(explicit_logits, autograd_logits, rtol=1e-12, atol=1e-12)
    for w, w2 in zip(explicit.fast, autograd.fast, strict=True):
        torch.testing.assert_close(w, w2, rtol=1e-12, atol=1e-14)
    for kv, kv2 in zip(explicit.kv, autograd.kv, strict=True):
        torch.testing.assert_close(kv, kv2, rtol=1e-12, atol=1e-12)


def test_inference_mode_prefill_leaves_autograd_usable():
    """On the package's ops prefill and decode run in inference mode: the state holds inference tensors, yet a meta
    step after them differentiates (through the RoPE tables prefill cached), and the reference ops continue such a
    state (also inside the caller's inference mode) with the package's results."""
    model = _model(_config())
    tokens = _tokens(2, 4 * 16 + 1, seed=18)
    state, logits = model.prefill(tokens[:, :-1], return_logits=True)  # 3 inner steps, the 4th chunk pending
    assert logits.is_inference() and all(w.is_inference() for w in state.fast)
    grads = _loss_and_grads(model, tokens)[2]
    assert all(g.abs().sum() > 0 for g in grads.values())
    reference = reference_copy(model)
    ref_state, ref_logits = reference.prefill(tokens[:, :-1], return_logits=True)
    assert not ref_logits.is_inference() and not ref_state.fast[0].is_inference()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    # The last token completes the pending chunk: its inner step on the reference ops, from the package's state.
    model.ops = "reference"
    mixed = model.decode(state, tokens[:, -1])
    with torch.inference_mode():
        ref_next = reference.decode(ref_state, tokens[:, -1])
    torch.testing.assert_close(mixed, ref_next, rtol=1e-10, atol=1e-10)
    for w, w_ref in zip(state.fast, ref_state.fast, strict=True):
        torch.testing.assert_close(w, w_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("overrides", [dict(bos_token_id=7), dict(num_kv_heads=1, inner_max_norm=0.05)])
def test_explicit_meta_chunks_match_autograd(overrides):
    """meta_loss on the package's ops runs each chunk's inner gradient written out (model/chunk_step.py), recorded by
    autograd for the outer gradient; against the same ops with the inner gradient by torch.autograd.grad: loss and
    every parameter's gradient, second and first order, with and without recomputation, and under no_grad."""
    model = _model(_config(**overrides))
    tokens = _tokens(2, 5 * 16 + 1, seed=17)
    tokens[0, 20:30] = 7
    autograd = dataclasses.replace(model._opset, name="package (autograd)")

    def run(opset, **options):
        model._opset = opset
        model.zero_grad()
        loss, per_chunk = model.meta_loss(tokens, 0.7, **options)
        loss.backward()
        with torch.no_grad():
            no_grad_chunks = model.meta_loss(tokens, 0.7, **options)[1]
        return per_chunk.detach(), no_grad_chunks, [p.grad.clone() for p in model.parameters()]

    explicit = model._opset
    for options in (dict(checkpoint=False), dict(checkpoint=True), dict(checkpoint=False, first_order=True)):
        want, got = run(autograd, **options), run(explicit, **options)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
        for g, w in zip(got[2], want[2], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_generate():
    model = _model(_config()).float()
    prompt = _tokens(2, 40, seed=11)
    a = model.generate(prompt, 30, temperature=0.8, top_p=0.9, seed=3)
    b = model.generate(prompt, 30, temperature=0.8, top_p=0.9, seed=3)
    c = model.generate(prompt, 30, temperature=0.8, top_p=0.9, seed=4)
    assert a.shape == (2, 70) and torch.equal(a[:, :40], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(prompt[0], 5, temperature=0)
    state = model.prefill(prompt[:1])
    expected = []
    for _ in range(5):
        expected.append(state.logits.argmax(-1))
        model.decode(state, expected[-1])
    assert greedy.shape == (45,) and torch.equal(greedy[40:], torch.cat(expected))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 1, top_p=0)
    calls = []
    model.generate(prompt, 3, seed=3, progress=lambda *call: calls.append(call))
    assert calls == [("prefill", 40, 40), ("decode", 1, 3), ("decode", 2, 3), ("decode", 3, 3)]
    with pytest.raises(ValueError, match="one token per sequence"):
        model.decode(model.new_state(2), prompt[:, :2])
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="slice_tokens must be an int >= 1"):
            model.prefill(prompt, slice_tokens=bad)


def test_chunk_step_with_a_device_position():
    """The chunk step a CUDA graph captures (position as a 0-d tensor, RoPE computed from it) is the eager one."""
    model = _model(_config())
    tokens = _tokens(2, 5 * 16 + 1, seed=14)
    state = model.prefill(tokens[:, :64])
    n_pre = model.config.num_prefix_layers
    h, _ = model._embed_prefix(tokens[:, 64:80], 64, state.kv[:n_pre])
    kv = state.kv[n_pre:]
    assert all(k.shape[1] == model.config.window - 1 for k, _ in kv)
    eager = model._chunk_step(h, tokens[:, 65:81], 64, state.fast, kv, 1.0)
    on_device = model._chunk_step(h, tokens[:, 65:81], torch.tensor(64), state.fast, kv, 1.0)
    for a, b in zip(_flatten(eager), _flatten(on_device)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        model.prefill(tokens, cuda_graph=True)


def _flatten(items):
    """The tensors of nested tuples/lists, in order."""
    if isinstance(items, torch.Tensor):
        return [items]
    return [t for item in items for t in _flatten(item)]


# ---------------------------------------------------------------------------------------------------------------------
# The official parameter layout


def test_official_round_trip():
    c = _config()
    model = _model(c).float()
    arrays = model.to_official()
    L, d, m, hd, S = c.num_layers, c.hidden_size, c.mlp_size, c.head_dim, c.num_suffix_layers
    p = "language_model.model."
    shapes = {
        "wte.weight": (256, d),
        "ln_f.weight": (d,),
        "h.blocks.seq_modeling_block.wq.weight": (L, d, d),
        "h.blocks.seq_modeling_block.k_norm.weight": (L, hd),
        "h.blocks.feed_forward.w1.weight": (L, d, m),
        "h.blocks.feed_forward.w2.weight": (L, m, d),
        "h.blocks.ffn_post_norm.weight": (L, d),
        "h.prime_storage.ffn_prime_norm.weight": (S, d),
        "h.prime_storage.feed_forward_prime.w3.weight": (S, d, m),
        "h.prime_storage.feed_forward_prime.w2.weight": (S, m, d),
    }
    for name, shape in shapes.items():
        assert arrays[p + name].shape == shape and arrays[p + name].dtype == np.float32
    assert len(arrays) == 20
    # [in, out] weights applied as x @ W; stacked layers; prime_storage index j is block L - S + j.
    x = torch.randn(3, d)
    blk = model.blocks[1]
    torch.testing.assert_close(
        x @ torch.from_numpy(arrays[p + "h.blocks.seq_modeling_block.wq.weight"][1]), F.linear(x, blk.attn.wq.weight)
    )
    assert np.array_equal(
        arrays[p + "h.prime_storage.feed_forward_prime.w2.weight"][1],
        model.blocks[L - S + 1].prime.w2.weight.detach().numpy().T,
    )
    # Through an .npz file, with a leading path component, into a fresh model: exact.
    buf = io.BytesIO()
    np.savez(buf, **{"params." + k: v for k, v in arrays.items()})
    buf.seek(0)
    with np.load(buf) as npz:
        loaded = TTTE2EModel.from_official(npz, c)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    again = loaded.to_official()
    assert all(np.array_equal(again[k], arrays[k]) for k in arrays)
    # Errors name the problem.
    with pytest.raises(ValueError, match="missing .*ln_f"):
        TTTE2EModel.from_official({k: v for k, v in arrays.items() if "ln_f" not in k}, c)
    with pytest.raises(ValueError, match="has shape"):
        TTTE2EModel.from_official({**arrays, p + "wte.weight": arrays[p + "wte.weight"][:, :5]}, c)
    with pytest.raises(ValueError, match="grouped-query"):
        TTTE2EModel(_config(num_kv_heads=1)).to_official()


def test_to_official_grad():
    c = _config()
    model = _model(c)
    zeros = model.to_official(grad=True)
    assert all(not v.any() for v in zeros.values())
    model.meta_loss(_tokens(1, 33, seed=12))[0].backward()
    grads = model.to_official(grad=True)
    p = "language_model.model."
    for name, param_of in {
        "h.blocks.seq_modeling_block.wo.weight": lambda i: model.blocks[i].attn.wo.weight,
        "h.blocks.feed_forward.w3.weight": lambda i: model.blocks[i].ffn.w3.weight,
    }.items():
        for i in range(c.num_layers):
            assert np.array_equal(grads[p + name][i], param_of(i).grad.numpy().T)
    assert np.array_equal(grads[p + "wte.weight"], model.embed.weight.grad.numpy())
    assert np.array_equal(
        grads[p + "h.prime_storage.feed_forward_prime.w1.weight"][0],
        model.suffix_blocks[0].prime.w1.weight.grad.numpy().T,
    )
    assert all(v.any() for v in grads.values())


# ---------------------------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
def test_cuda_matches_cpu():
    """bfloat16 on the GPU (the CUDA MLP kernels take 16-bit activations) vs float32 on the CPU."""
    model = _model(_config()).float()
    tokens = _tokens(2, 3 * 16 + 1, seed=13)
    _, per_chunk, grads = _loss_and_grads(model, tokens)
    _, logits = model.prefill(tokens, return_logits=True)
    model.cuda().bfloat16()
    _, per_chunk_gpu, grads_gpu = _loss_and_grads(model, tokens.cuda())
    torch.testing.assert_close(per_chunk_gpu.cpu(), per_chunk, rtol=0, atol=3e-2)
    for k in grads:
        _assert_close(grads_gpu[k].cpu().float(), grads[k], f"grad[{k}]", rtol=0.15)
    _, logits_gpu = model.prefill(tokens.cuda(), return_logits=True)
    _assert_close(logits_gpu.cpu(), logits, "prefill logits", rtol=0.1)


@pytest.mark.gpu
def test_cuda_graph_chunk_step_matches_eager():
    """prefill and decode with the chunk step replayed as a CUDA graph give the eager results."""
    model = _model(_config()).float().cuda()
    tokens = _tokens(2, 8 * 16 + 1, seed=15).cuda()
    results = []
    for cuda_graph in (False, True):
        state, logits = model.prefill(tokens[:, :100], return_logits=True, cuda_graph=cuda_graph)
        decoded = torch.stack([model.decode(state, tokens[:, i]) for i in range(100, tokens.shape[1])], 1)
        assert (state.chunk_graph is not None) == cuda_graph
        results.append([logits, decoded, *state.fast, *_flatten(state.kv)])
    for eager, graphed in zip(*results):
        torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-6)
