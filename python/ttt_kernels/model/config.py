"""Configuration of the TTT-E2E network: sizes, window, mini-batch, RoPE, inner-loop settings, presets."""

import dataclasses
import json
import math

# layers, d_model, heads, MLP width (TTT-E2E, shrunk to match a full-attention Transformer's parameters), suffix blocks
_PAPER_PRESETS = {
    "125m": (12, 768, 12, 1664, 3),
    "350m": (24, 1024, 16, 2304, 6),
    "760m": (24, 1536, 16, 3328, 6),
    "1b": (24, 2048, 32, 4352, 6),
    "3b": (32, 2560, 32, 5632, 8),
}
_LLAMA3_VOCAB = 128256
_LLAMA3_BOS = 128000  # <|begin_of_text|>


def check_int(value, name: str, minimum: int = 1, alternatives: str = "") -> None:
    """ValueError "<name> must be an int >= <minimum><alternatives>, got <value>" unless value is an int (a bool is
    not) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{alternatives}, got {value!r}")


# Byte-level presets for experiments on a CPU: 256 byte tokens, no token reserved for BOS.
_BYTE_PRESETS = {
    "tiny": dict(
        num_layers=4, hidden_size=128, num_heads=2, mlp_size=288, num_suffix_layers=1, window=256, mini_batch_size=64
    ),
    "small": dict(
        num_layers=8, hidden_size=256, num_heads=4, mlp_size=576, num_suffix_layers=2, window=512, mini_batch_size=128
    ),
}


@dataclasses.dataclass
class TTTE2EConfig:
    """Sizes and settings of a TTT-E2E model (see docs/model.md).

    The last ``num_suffix_layers`` blocks carry the dynamic MLP (fast weights). ``window`` (k) is the number of keys
    each query sees, itself included; ``mini_batch_size`` (b) is the number of tokens per inner step (k >= b).
    ``num_kv_heads`` < ``num_heads`` gives grouped-query attention (None: as many as query heads).
    ``ttt=False`` is the sliding-window baseline: no inner steps, the dynamic MLP is an ordinary static MLP; with a
    window at least the sequence length it is the full-attention baseline. ``inner_max_norm`` is the global-norm clip
    of the inner gradient (1.0 in the paper). ``rope_float32_angles`` computes the RoPE angle table in float32 as the
    official code does (bit-compatible with its checkpoints and gradients); False computes exact (float64) angles.
    ``bos_token_id``: targets equal to it are masked out of the loss (None: no masking).
    """

    vocab_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_size: int
    num_suffix_layers: int
    window: int = 8192
    mini_batch_size: int = 1024
    rope_theta: float = 500000.0
    bos_token_id: int | None = None
    num_kv_heads: int | None = None
    norm_eps: float = 1e-6
    init_std: float = 0.02
    inner_max_norm: float = 1.0
    ttt: bool = True
    rope_float32_angles: bool = True

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def num_prefix_layers(self) -> int:
        return self.num_layers - self.num_suffix_layers

    def validate(self) -> None:
        """Raises ValueError naming the first field that is out of range or inconsistent."""
        for name in (
            "vocab_size",
            "num_layers",
            "hidden_size",
            "num_heads",
            "mlp_size",
            "num_suffix_layers",
            "window",
            "mini_batch_size",
        ):
            check_int(getattr(self, name), f"TTTE2EConfig.{name}")
            if getattr(self, name) >= 2**31:
                raise ValueError(f"TTTE2EConfig.{name} must be < 2^31, got {getattr(self, name)}")
        if self.num_suffix_layers > self.num_layers:
            raise ValueError(
                f"TTTE2EConfig.num_suffix_layers ({self.num_suffix_layers}) must not exceed num_layers "
                f"({self.num_layers})"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"TTTE2EConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"TTTE2EConfig: head_dim (hidden_size / num_heads = {self.head_dim}) must be even (RoPE rotates pairs)"
            )
        kv = self.num_kv_heads
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or self.num_heads % kv):
            raise ValueError(
                f"TTTE2EConfig.num_kv_heads must be None or an int >= 1 dividing num_heads "
                f"({self.num_heads}), got {kv!r}"
            )
        if self.window < self.mini_batch_size:
            raise ValueError(f"TTTE2EConfig.window ({self.window}) must be >= mini_batch_size ({self.mini_batch_size})")
        bos = self.bos_token_id
        if bos is not None and (isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < self.vocab_size):
            raise ValueError(
                f"TTTE2EConfig.bos_token_id must be None or an int in [0, vocab_size = {self.vocab_size}), got {bos!r}"
            )
        for name in ("rope_theta", "norm_eps", "init_std", "inner_max_norm"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"TTTE2EConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("ttt", "rope_float32_angles"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TTTE2EConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TTTE2EConfig":
        """The paper's sizes (125m, 350m, 760m, 1b, 3b: Llama-3 vocabulary, k = 8192, b = 1024) or the byte-level
        CPU sizes (tiny, small); keyword arguments override fields (e.g. ``window=..., ttt=False``)."""
        if name in _PAPER_PRESETS:
            layers, d, heads, m, suffix = _PAPER_PRESETS[name]
            fields = dict(
                vocab_size=_LLAMA3_VOCAB,
                num_layers=layers,
                hidden_size=d,
                num_heads=heads,
                mlp_size=m,
                num_suffix_layers=suffix,
                window=8192,
                mini_batch_size=1024,
                bos_token_id=_LLAMA3_BOS,
            )
        elif name in _BYTE_PRESETS:
            fields = dict(vocab_size=256, **_BYTE_PRESETS[name])
        else:
            raise ValueError(
                f"TTTE2EConfig.preset: unknown preset {name!r}; expected one of "
                f"{sorted(_PAPER_PRESETS) + sorted(_BYTE_PRESETS)}"
            )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"TTTE2EConfig.preset: unknown fields {sorted(unknown)}")
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TTTE2EConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"TTTE2EConfig.from_dict: unknown fields {sorted(unknown)}")
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - set(d)
        if missing:
            raise ValueError(f"TTTE2EConfig.from_dict: missing fields {sorted(missing)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TTTE2EConfig":
        return cls.from_dict(json.loads(text))
