"""The official (JAX) implementation's parameter layout: a flat mapping pytree path -> array (docs/model.md).

Linear weights are stored [in, out] (the transpose of a torch Linear weight); ``h.blocks.*`` leaves are stacked over
all L blocks, ``h.prime_storage.*`` leaves over the S suffix blocks.
"""

import numpy as np
import torch

PREFIX = "language_model.model."


def _layout(model) -> dict:
    """official name -> (parameters in stacking order (None: a single unstacked leaf), transposed)."""
    c = model.config
    if c.kv_heads != c.num_heads:
        raise ValueError(
            f"the official layout has no grouped-query attention; this model has num_kv_heads = "
            f"{c.kv_heads} < num_heads = {c.num_heads}"
        )
    blocks, suffix = list(model.blocks), list(model.suffix_blocks)
    layout = {"wte.weight": ([model.embed.weight], None), "ln_f.weight": ([model.norm_f.weight], None)}
    for name in ("wq", "wk", "wv", "wo"):
        layout[f"h.blocks.seq_modeling_block.{name}.weight"] = ([getattr(b.attn, name).weight for b in blocks], True)
    for name in ("q_norm", "k_norm"):
        layout[f"h.blocks.seq_modeling_block.{name}.weight"] = ([getattr(b.attn, name).weight for b in blocks], False)
    for name in ("w1", "w3", "w2"):
        layout[f"h.blocks.feed_forward.{name}.weight"] = ([getattr(b.ffn, name).weight for b in blocks], True)
    for name in ("seq_norm", "seq_post_norm", "ffn_norm", "ffn_post_norm"):
        layout[f"h.blocks.{name}.weight"] = ([getattr(b, name).weight for b in blocks], False)
    for official, ours in (("ffn_prime_norm", "prime_norm"), ("ffn_prime_post_norm", "prime_post_norm")):
        layout[f"h.prime_storage.{official}.weight"] = ([getattr(b, ours).weight for b in suffix], False)
    for name in ("w1", "w3", "w2"):
        layout[f"h.prime_storage.feed_forward_prime.{name}.weight"] = (
            [getattr(b.prime, name).weight for b in suffix],
            True,
        )
    return {PREFIX + k: v for k, v in layout.items()}


def _official_shape(params, transposed) -> tuple:
    shape = tuple(params[0].shape[::-1] if transposed else params[0].shape)
    return shape if transposed is None else (len(params), *shape)


def dump(model, grad: bool) -> dict:
    out = {}
    for name, (params, transposed) in _layout(model).items():
        ts = [p.grad if grad and p.grad is not None else torch.zeros_like(p) if grad else p for p in params]
        ts = [t.detach().T if transposed else t.detach() for t in ts]
        t = ts[0] if transposed is None else torch.stack(ts)
        # numpy has no bfloat16: 16-bit floats are exported as (exactly representable) float32.
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        out[name] = t.cpu().contiguous().numpy()
    return out


def load(model, arrays) -> None:
    layout = _layout(model)
    found = {}
    for key in arrays:
        at = key.find(PREFIX)
        name = key[at:] if at >= 0 else key
        if name in found:
            raise ValueError(f"from_official: keys {found[name]!r} and {key!r} name the same parameter {name!r}")
        found[name] = key
    missing, unexpected = sorted(set(layout) - set(found)), sorted(set(found) - set(layout))
    if missing or unexpected:
        raise ValueError(
            f"from_official: the mapping does not match the official layout of this config; missing "
            f"{missing}, unexpected {[found[n] for n in unexpected]}"
        )
    with torch.no_grad():
        for name, (params, transposed) in layout.items():
            array = np.asarray(arrays[found[name]])
            if array.dtype not in (np.float32, np.float64):  # e.g. bfloat16 (ml_dtypes) or float16: exact in float32
                array = array.astype(np.float32)
            value = torch.from_numpy(array)
            expected = _official_shape(params, transposed)
            if tuple(value.shape) != expected:
                raise ValueError(f"from_official: {found[name]!r} has shape {tuple(value.shape)}, expected {expected}")
            values = [value] if transposed is None else list(value.unbind(0))
            for p, v in zip(params, values):
                p.copy_(v.T if transposed else v)
