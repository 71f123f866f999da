"""Text corpora, tokenizers, block packing and perplexity for the causal-LM task.

Two corpora:

* ``pydoc`` (offline default): the English documentation topics that ship with Python
  (``pydoc_data.topics``). It is *not* WikiText-2; it exists so the text task runs and
  is tested on machines without a network. Perplexities on it are not comparable with
  published WikiText-2 numbers.
* ``wikitext2``: WikiText-2 raw, read with Hugging Face ``datasets`` from a local copy
  (classic ``wiki.*.tokens`` files or the hub's parquet files), or downloaded when
  ``download=True``.

A corpus is ``{"train" | "validation" | "test": [document, ...]}``. Documents are
joined into one token stream per split with the tokenizer's eos token between them and
cut into fixed blocks (:func:`pack_blocks`), so no padding is ever needed.

Everything expensive (tokenizer training, tokenisation) is cached under
:func:`cache_root` keyed by content hashes, so the P workers of a PASO run do the work
once and all get byte-identical tokens.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..config import DEFAULT_VOCAB_SIZE
from .layouts import (SPLITS, WIKITEXT_HUB_SUBDIR, WIKITEXT_PARQUET_FILES,  # noqa: F401 (re-exported)
                      WIKITEXT_TOKEN_FILES, find_wikitext_files, missing_wikitext_message)

EOS_TOKEN = "<|endoftext|>"
# Bump when the tokenizer recipe below changes, so stale cached tokenizers are not reused.
_BPE_RECIPE = "bytelevel-bpe-v1"
_PYDOC_HELD_OUT_FRACTION = 0.05  # of characters, for each of validation and test


# ---------------------------------------------------------------------------- caching
def cache_root() -> Path:
    """Where tokenizers and token streams are cached: ``$PASO_CACHE`` or ``~/.cache/paso_artifact``."""
    root = os.environ.get("PASO_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "paso_artifact"


def _digest(parts: Iterable[str | bytes]) -> str:
    """SHA-256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def corpus_fingerprint(documents: Sequence[str]) -> str:
    """Content hash of a list of documents (the cache key of anything derived from them)."""
    return _digest(documents)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file + rename, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a shared cache must be readable by all
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _file_lock(path: Path) -> Any:
    """An inter-process lock next to ``path``: the first worker builds, the others wait and read."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


# ---------------------------------------------------------------------------- corpora
def load_corpus(dataset: str, data_root: str | None = None, download: bool = False) -> dict[str, list[str]]:
    """The documents of every split of ``dataset`` ('pydoc' or 'wikitext2')."""
    if dataset == "pydoc":
        corpus = load_pydoc_corpus()
    elif dataset == "wikitext2":
        corpus = load_wikitext2(data_root, download)
    else:
        raise ValueError(f"dataset={dataset!r} is not a text dataset; choose one of: pydoc, wikitext2")
    _check_nonempty(corpus, dataset)
    return corpus


def _check_nonempty(corpus: dict[str, list[str]], source: str) -> None:
    """Every split must hold some non-blank text; an empty split cannot be trained or scored."""
    for split in SPLITS:
        if not any(doc.strip() for doc in corpus.get(split, [])):
            raise ValueError(f"the {split!r} split of {source} holds no non-blank text")


def load_pydoc_corpus(held_out: float = _PYDOC_HELD_OUT_FRACTION) -> dict[str, list[str]]:
    """Python's documentation topics, one document per topic, split by topic.

    Topics are ordered by the SHA-256 of their name (a fixed pseudo-random order that
    does not depend on Python's hash seed); validation takes topics from the front of
    that order until it holds ``held_out`` of all characters, test the next ones, train
    the rest (~90/5/5 by characters). Splitting by topic keeps a topic's text in one split;
    topics with identical text (e.g. 'if' and 'else') are kept once, so none leaks across splits.
    """
    from pydoc_data.topics import topics

    order = sorted(topics, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    texts = list(dict.fromkeys(topics[name].strip() for name in order))  # dedupe, keep order
    total = sum(len(text) for text in texts)
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    target = held_out * total
    filled = {"validation": 0, "test": 0}
    for text in texts:
        split = next((s for s in ("validation", "test") if filled[s] < target), "train")
        if split != "train":
            filled[split] += len(text)
        splits[split].append(text)
    return splits


def load_wikitext2(data_root: str | None, download: bool) -> dict[str, list[str]]:
    """WikiText-2 raw from ``data_root`` (tokens or parquet files) or, if allowed, the hub."""
    if data_root is not None:
        found = find_wikitext_files(Path(data_root).expanduser())
        if found is not None:
            builder, files = found
            return _load_wikitext_files(builder, files)
    if download:  # no complete local copy: fetch the hub's copy (needs a network)
        return _download_wikitext2()
    raise FileNotFoundError(missing_wikitext_message(data_root))


def _download_wikitext2() -> dict[str, list[str]]:
    """WikiText-2 raw from the Hugging Face hub; any failure says how to use a local copy."""
    from datasets import load_dataset

    try:
        data = load_dataset("wikitext", "wikitext-2-raw-v1", cache_dir=str(cache_root() / "hf_datasets"))
    except Exception as err:  # offline, proxy, hub changes: all end the same way
        raise RuntimeError(
            f"could not download WikiText-2 from the Hugging Face hub ({type(err).__name__}: {err}); "
            f"put wiki.*.tokens or {WIKITEXT_HUB_SUBDIR}/*.parquet under data_root and pass download=False"
        ) from err
    return {split: wikitext_articles(data[split]["text"]) for split in SPLITS}


def _load_wikitext_files(builder: str, files: dict[str, str]) -> dict[str, list[str]]:
    """Read local WikiText-2 files with ``datasets`` (the ``text`` or ``parquet`` builder)."""
    from datasets import load_dataset

    data = load_dataset(builder, data_files=files, cache_dir=str(cache_root() / "hf_datasets"))
    for split in SPLITS:
        if "text" not in data[split].column_names:
            raise ValueError(f"{files[split]} has no 'text' column (columns: {data[split].column_names})")
    return {split: wikitext_articles(data[split]["text"]) for split in SPLITS}


_ARTICLE_HEADING = re.compile(r"= (?!=).*(?<!=) =")


def wikitext_articles(lines: Iterable[str | None]) -> list[str]:
    """Group WikiText lines into articles (documents), each starting at a ` = Title = ` heading.

    The two formats differ only in line endings (the hub's parquet keeps ``"\\n"``, blank
    lines are ``""`` there and ``" "`` in the tokens files); both are normalised so they
    give identical documents. Section headings (` = = Sub = = `) stay inside their article.
    """
    articles: list[list[str]] = []
    current: list[str] = []
    for raw in lines:
        line = (raw or "").rstrip("\n")
        if not line.strip():
            line = ""
        if _ARTICLE_HEADING.fullmatch(line.strip()) and current:
            articles.append(current)
            current = []
        current.append(line)
    if current:
        articles.append(current)
    docs = ["\n".join(article).strip("\n") for article in articles]
    return [doc for doc in docs if doc.strip()]


# ---------------------------------------------------------------------------- tokenizers
def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``, with eos ``<|endoftext|>``.

    Byte-level means every string is encodable (no unknown token). Training is
    deterministic for the same texts in the same order (checked across processes).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size} is too small; byte-level BPE needs >= 257 (256 bytes + eos)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN)


def cached_bpe_tokenizer(train_docs: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
                         root: Path | None = None) -> tuple[Any, Path]:
    """:func:`train_bpe_tokenizer` on the train split, cached at ``<root>/tokenizers/<hash>.json``.

    Only the train split is used, so no validation/test text leaks into the vocabulary.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    key = _digest([_BPE_RECIPE, str(vocab_size), corpus_fingerprint(train_docs)])[:32]
    path = (root or cache_root()) / "tokenizers" / f"{key}.json"
    with _file_lock(path):
        if not path.is_file():
            tok = train_bpe_tokenizer(train_docs, vocab_size)
            _atomic_write(path, lambda tmp: tok.backend_tokenizer.save(tmp))
    backend = Tokenizer.from_file(str(path))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN), path


def load_pretrained_tokenizer(model_dir: str) -> Any:
    """The tokenizer saved with a pretrained model (``AutoTokenizer.from_pretrained``)."""
    from transformers import AutoTokenizer

    hint = "save the model's tokenizer there with tokenizer.save_pretrained(model_dir)"
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"could not load a tokenizer from model_dir={model_dir!r} ({type(err).__name__}: {err}); {hint}") from err
    # transformers >= 5 silently builds an *empty* tokenizer from config.json when the
    # tokenizer files are missing; it would turn every document into zero tokens.
    if not tokenize_documents(tok, ["The quick brown fox."])[0]:
        raise ValueError(f"the tokenizer in model_dir={model_dir!r} is empty (tokenizer files missing?); {hint}")
    return tok


def require_eos(tokenizer: Any, source: str) -> int:
    """The eos id; documents are separated by it in the packed stream, so it must exist."""
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ValueError(
            f"the tokenizer of {source} has no eos token; the text task separates documents "
            "with eos when packing blocks. Set tokenizer.eos_token and save it again"
        )
    return int(eos_id)


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """Content hash of a fast tokenizer (its full JSON), or None when it has no fast backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return _digest([backend.to_str()])


def tokenize_documents(tokenizer: Any, documents: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens (eos is added by packing, bos never)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast path; also avoids the "longer than max length" warning
        return [enc.ids for enc in backend.encode_batch(list(documents), add_special_tokens=False)]
    return [tokenizer.encode(doc, add_special_tokens=False, verbose=False) for doc in documents]


def token_stream(tokenizer: Any, documents: Sequence[str], eos_id: int,
                 root: Path | None = None) -> torch.Tensor:
    """The eos-joined token stream of ``documents`` (see :func:`concat_with_eos`), cached on disk."""
    tok_key = tokenizer_fingerprint(tokenizer)
    if tok_key is None:  # no stable identity for a slow tokenizer: do not cache
        return concat_with_eos(tokenize_documents(tokenizer, documents), eos_id)
    key = _digest(["stream-v1", tok_key, str(eos_id), corpus_fingerprint(documents)])[:32]
    path = (root or cache_root()) / "tokens" / f"{key}.pt"
    with _file_lock(path):
        if not path.is_file():
            stream = concat_with_eos(tokenize_documents(tokenizer, documents), eos_id)
            small = stream.numel() == 0 or int(stream.max()) < 2**31
            dtype = torch.int32 if small else torch.int64  # int32 halves the cache file
            _atomic_write(path, lambda tmp: torch.save(stream.to(dtype), tmp))
    return torch.load(path, weights_only=True).long()


# ---------------------------------------------------------------------------- packing
def concat_with_eos(token_ids: Sequence[Sequence[int]], eos_id: int) -> torch.Tensor:
    """One LongTensor: ``doc_0 eos doc_1 eos ... doc_n eos`` (empty documents skipped)."""
    pieces = [torch.tensor(list(ids) + [eos_id], dtype=torch.long) for ids in token_ids if len(ids)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def blocks_from_stream(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a token stream into ``(n_blocks, block_size + 1)`` blocks with stride ``block_size``.

    Convention: block ``i`` is ``stream[i*B : i*B + B + 1]``; its inputs are ``block[:-1]``
    and its targets ``block[1:]``. Consecutive blocks share one boundary token (the last
    target of block ``i`` is the first input of block ``i+1``), so every token after the
    first is a *target exactly once* and every target sees a full row of context inside
    its block. The tail ``(len(stream) - 1) % B`` tokens that do not fill a block are
    dropped (at most ``B - 1`` tokens per split).
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    n_blocks = max(0, (stream.numel() - 1) // block_size)
    if n_blocks == 0:
        return torch.zeros(0, block_size + 1, dtype=torch.long)
    return stream[: n_blocks * block_size + 1].unfold(0, block_size + 1, block_size).contiguous()


def pack_blocks(token_ids: Sequence[Sequence[int]], block_size: int, eos_id: int) -> torch.Tensor:
    """Documents -> eos-joined stream -> ``(n_blocks, block_size + 1)`` LongTensor (see :func:`blocks_from_stream`)."""
    return blocks_from_stream(concat_with_eos(token_ids, eos_id), block_size)


# ---------------------------------------------------------------------------- perplexity
def perplexity(total_nll: float, total_tokens: int) -> float:
    """``exp(total NLL / total predicted tokens)``: the standard corpus-level perplexity."""
    if total_tokens <= 0:
        raise ValueError(f"total_tokens={total_tokens} must be > 0 to compute a perplexity")
    mean = total_nll / total_tokens
    return math.exp(mean) if mean < 700 else math.inf


def perplexity_comparison(batch_nll_sums: Sequence[float], batch_tokens: Sequence[int]) -> dict[str, float]:
    """The correct perplexity next to the seed reference's ``mean(exp(batch mean loss))``.

    The seed's variant averages per-batch perplexities; by Jensen's inequality it is
    >= the corpus perplexity and depends on how the split is batched. It is returned only
    under the key ``ppl_seed_mean_exp_batch_loss`` for a labelled comparison with the
    paper's numbers, never as *the* perplexity.
    """
    if len(batch_nll_sums) != len(batch_tokens) or not batch_tokens:
        raise ValueError("need one token count per batch and at least one batch")
    ppl = perplexity(float(sum(batch_nll_sums)), int(sum(batch_tokens)))
    batch_ppl = [math.exp(min(n / t, 700.0)) for n, t in zip(batch_nll_sums, batch_tokens)]
    return {"ppl": ppl, "ppl_seed_mean_exp_batch_loss": sum(batch_ppl) / len(batch_ppl)}
