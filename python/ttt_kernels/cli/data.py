"""Corpus and tokenizer of the command line: bytes of text files, split into train/validation by file.

The default corpus is the Python standard library's own source: every ``.py`` file under
``sysconfig.get_paths()["stdlib"]`` of the interpreter running the command (site-packages excluded), so it needs no
download. Tokens are bytes (vocabulary 256, no special tokens). A file belongs to the validation split when the
SHA-256 of its path relative to the corpus root, read as an integer, is 0 modulo ``VALIDATION_MODULUS`` (about 10%);
a single file (or a directory whose files all hash to one split) is split by position instead: its last 10% of bytes
are validation. Files are concatenated in sorted path order, so the token streams depend on the file contents only.
"""

import dataclasses
import hashlib
import os
import sysconfig

import numpy as np
import torch

from .errors import CLIError

VALIDATION_MODULUS = 10
DEFAULT_PATTERN = ".py"
VOCAB_SIZE = 256
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def encode(text: str) -> list[int]:
    """UTF-8 bytes of text as token ids (0..255). Bytes that are not UTF-8 in a command-line argument (Python keeps
    them as surrogate escapes, e.g. --prompt $'\\xff') are the tokens of those bytes."""
    return list(text.encode("utf-8", "surrogateescape"))


_CONTROL = {c: "\ufffd" for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}


def decode(tokens, printable: bool = False) -> str:
    """Token ids back to text (invalid UTF-8 sequences shown as U+FFFD; with ``printable`` also control characters
    other than tab, newline and carriage return, so that sampled bytes cannot drive the terminal)."""
    text = bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
    return text.translate(_CONTROL) if printable else text


def default_corpus_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def is_validation(relative_path: str) -> bool:
    # The path's bytes as the file system has them (any name, UTF-8 or not).
    digest = hashlib.sha256(os.fsencode(relative_path.replace(os.sep, "/"))).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_MODULUS == 0


@dataclasses.dataclass
class Corpus:
    """Token streams (uint8 tensors) of the train and validation splits, and where they came from."""

    source: str
    train: torch.Tensor
    validation: torch.Tensor
    train_files: int
    validation_files: int

    def describe(self) -> str:
        files = f"{self.train_files} + {self.validation_files} files, " if self.validation_files else ""
        return (
            f"{self.source}: {files}{len(self.train) / 1e6:.2f} MB train, {len(self.validation) / 1e6:.2f} MB "
            "validation (byte tokens)"
        )


def _list_files(root: str, suffix: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(suffix) and not name.startswith("."):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):
                    found.append(path)
    return sorted(found, key=lambda p: os.path.relpath(p, root))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CLIError(f"--corpus: cannot read {path}: {e.strerror}") from None


def _to_tensor(chunks: list[bytes]) -> torch.Tensor:
    data = b"".join(chunks)
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()) if data else torch.zeros(0, dtype=torch.uint8)


def _split_by_position(data: bytes) -> tuple[bytes, bytes]:
    cut = len(data) - len(data) // VALIDATION_MODULUS
    return data[:cut], data[cut:]


def load_corpus(path: str | None = None, suffix: str | None = None) -> Corpus:
    """The corpus at ``path`` (a text file or a directory; None: the standard library's source).

    ``suffix``: which files of a directory to read (default ``.py`` for the standard library, every file otherwise;
    files containing NUL bytes are skipped as binary). Raises CLIError for a missing path or an empty corpus.
    """
    if path is None:
        root, source = default_corpus_root(), "Python standard library"
        suffix = DEFAULT_PATTERN if suffix is None else suffix
        if not os.path.isdir(root):
            raise CLIError(f"--corpus: the standard library directory {root} of this Python does not exist")
    else:
        root, source = path, path
        suffix = "" if suffix is None else suffix
        if not os.path.exists(path):
            raise CLIError(f"--corpus: {path} does not exist (expected a text file or a directory of text files)")
    if os.path.isfile(root):
        train, val = _split_by_position(_read(root))
        corpus = Corpus(source, _to_tensor([train]), _to_tensor([val]), 0, 0)
    else:
        train, val = [], []
        for file in _list_files(root, suffix):
            data = _read(file)
            if not data or b"\0" in data:
                continue
            (val if is_validation(os.path.relpath(file, root)) else train).append(data)
        n_train, n_val = len(train), len(val)
        if not train or not val:  # everything hashed to one split: split the concatenation by position
            t, v = _split_by_position(b"".join(train + val))
            train, val, n_train, n_val = [t], [v], 0, 0
        corpus = Corpus(source, _to_tensor(train), _to_tensor(val), n_train, n_val)
    if len(corpus.train) == 0:
        what = f"files ending in {suffix!r}" if suffix and not os.path.isfile(root) else "text"
        raise CLIError(f"--corpus: {source} is empty (no {what} found)")
    return corpus


def require_length(corpus: Corpus, length: int, what: str = "--context") -> None:
    """Both splits must hold at least one window of ``length`` + 1 tokens."""
    for name, stream in (("train", corpus.train), ("validation", corpus.validation)):
        if len(stream) < length + 1:
            raise CLIError(
                f"{what}: the corpus's {name} split has {len(stream)} tokens, fewer than one window of "
                f"{length} + 1 tokens; use a larger corpus or a shorter context"
            )


class WindowSampler:
    """Random training windows of ``length`` + 1 tokens, deterministic given the seed.

    Offsets are drawn uniformly from a private torch.Generator; :meth:`state_dict` / :meth:`load_state_dict` save
    and restore it (and the number of batches drawn), so a resumed run draws the same windows. ``rank`` of
    ``world_size`` processes: every process draws the same ``batch_size`` offsets (the global batch) and reads its
    share, rows [rank * batch_size / world_size, (rank + 1) * batch_size / world_size): the sequence of global
    batches is the same for any number of processes.
    """

    def __init__(
        self, tokens: torch.Tensor, length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if batch_size % world_size:
            raise CLIError(
                f"--batch ({batch_size}, the global batch) must be a multiple of the number of processes ({world_size})"
            )
        self.tokens, self.length, self.batch_size = tokens, length, batch_size
        per = batch_size // world_size
        self.rows = slice(rank * per, (rank + 1) * per)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def next_batch(self) -> torch.Tensor:
        high = len(self.tokens) - self.length  # offsets 0 .. len - (length + 1)
        offsets = torch.randint(0, high, (self.batch_size,), generator=self.generator)[self.rows]
        self.batches += 1
        return torch.stack([self.tokens[o : o + self.length + 1] for o in offsets.tolist()]).long()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])


def evaluation_windows(tokens: torch.Tensor, length: int, count: int) -> torch.Tensor:
    """``count`` windows of ``length`` + 1 tokens at evenly spaced offsets of the stream (independent of any seed,
    so every evaluation of the same corpus and context reads the same text). Fewer if the stream is short."""
    high = len(tokens) - (length + 1)
    count = max(1, min(count, high // max(length, 1) + 1))
    offsets = [round(i * high / max(count - 1, 1)) for i in range(count)] if count > 1 else [0]
    return torch.stack([tokens[o : o + length + 1] for o in offsets]).long()
