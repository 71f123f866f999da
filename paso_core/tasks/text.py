"""Causal language modelling (GPT-2 family or a pretrained model) as a task.

Batch convention: ``train_batch(t)`` returns ``(inputs, targets)``, two LongTensors of
shape ``(batch_size, block_size)`` on the task's device, where ``targets[i, j]`` is the
token that follows ``inputs[i, j]`` (see :func:`text_data.blocks_from_stream`). The loss
is the mean cross-entropy over all ``batch_size * block_size`` targets, so data-parallel
shards of equal size average back to exactly the full-batch loss.

Options of this task (besides those of :mod:`text_models`): ``vocab_size`` (size of the
BPE tokenizer trained for built models, default 4096) and ``eval_test`` (also score the
test split in :meth:`TextTask.evaluate`, default True).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from . import families, lora
from . import parquet_data as pqd
from . import text_data as td
from . import text_models as tm
from .base import Batch, InputTargetTask, generator_for, seeded_rng, step_seed

_EVAL_PREFIX = {"validation": "val", "test": "test"}


class TextTask(InputTargetTask):
    """Next-token prediction on packed blocks of a text corpus."""

    name = "text"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.model_dir = tm.resolve_model_dir(cfg)
        if self.model_dir is not None:  # fail on a too-long block before any tokenising
            self._config = tm.lm_config(cfg, vocab_size=0, model_dir=self.model_dir)
        else:
            tm.check_block_size(cfg.block_size, tm.built_context(cfg), str(cfg.model))
        # dataset=parquet streams training rows; only bounded samples are held (parquet_data.py)
        self.parquet = (pqd.ParquetSource(str(cfg.data_root), cfg.text_column, cfg.eval_rows)
                        if cfg.dataset == "parquet" else None)
        self.corpus = (self.parquet.bounded_corpus() if self.parquet is not None
                       else td.load_corpus(str(cfg.dataset), cfg.data_root, cfg.download))
        self.tokenizer, self.tokenizer_info = self._tokenizer()
        self.eos_id = td.require_eos(self.tokenizer, self.tokenizer_info["source"])
        self.vocab_size = len(self.tokenizer)
        self.streams = {s: td.token_stream(self.tokenizer, self.corpus[s], self.eos_id) for s in td.SPLITS}
        self.blocks = {s: self._blocks(s) for s in td.SPLITS}
        if self.model_dir is None:
            self._config = tm.lm_config(cfg, self.vocab_size, None, self.eos_id)
        self._check_token_ids()
        self.stream: pqd.StepPrefetcher | None = None
        if self.parquet is not None:
            samples = self.parquet.train_samples(self.tokenizer, self.eos_id, cfg.block_size, cfg.batch_size, cfg.seed)
            self.stream = pqd.StepPrefetcher(samples, cfg.loader_workers, cfg.steps)
        self.lora = lora.parse_lora(cfg.lora)
        self._lora_summary: dict[str, Any] | None = None
        self._n_params: int | None = None
        self._perm_cache: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ setup
    def _tokenizer(self) -> tuple[Any, dict[str, Any]]:
        """The model's own tokenizer for pretrained models; else BPE trained on the train split."""
        if self.model_dir is not None:
            tok = td.load_pretrained_tokenizer(self.model_dir)
            return tok, {"kind": f"pretrained ({type(tok).__name__})", "source": self.model_dir}
        vocab = self.cfg.vocab_size
        tok, path = td.cached_bpe_tokenizer(self.corpus["train"], vocab)
        trained_on = (f"the first {len(self.corpus['train'])} train rows" if self.parquet is not None
                      else "the train split")
        return tok, {"kind": f"byte-level BPE trained on {trained_on}", "source": str(path),
                     "requested_vocab_size": vocab}

    def _blocks(self, split: str) -> torch.Tensor:
        """Packed blocks of one split; an empty split means block_size is too large for it."""
        blocks = td.blocks_from_stream(self.streams[split], self.cfg.block_size)
        if blocks.shape[0] == 0:
            raise ValueError(
                f"the {split!r} split has {self.streams[split].numel()} tokens, fewer than "
                f"block_size+1={self.cfg.block_size + 1}; use a smaller block_size")
        return blocks

    def _check_token_ids(self) -> None:
        """Every token id must have an embedding row (a tokenizer/model mismatch otherwise)."""
        top = max(int(s.max()) for s in self.streams.values())
        if top >= self._config.vocab_size:
            raise ValueError(
                f"token id {top} from the tokenizer ({self.tokenizer_info['source']}) is outside "
                f"the model's vocabulary of {self._config.vocab_size}; use the model's own tokenizer")

    # ------------------------------------------------------------------ Task protocol
    def build_model(self) -> nn.Module:
        """The same initial model on every rank: random init under a fixed seed, or loaded weights;
        with ``lora``, LoRA adapters (drawn under the same seed) and every other parameter frozen,
        so every method trains only the adapters."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.cfg.seed, -1, stream=2))
            model = tm.build_lm(self.cfg, self.vocab_size, self.model_dir, self.eos_id, self._config)
            if self.lora is not None:
                model = lora.apply_lora(model, self.lora)
                self._lora_summary = lora.lora_summary(model, self.lora)
        self._n_params = sum(p.numel() for p in model.parameters())
        return model.to(self.device)

    def batches_per_epoch(self) -> int:
        """Full batches in one pass over the train blocks (the partial last batch is skipped)."""
        if self.stream is not None:
            return self.stream.samples.batches_per_epoch()
        n_blocks, bs = self.blocks["train"].shape[0], self.cfg.batch_size
        if bs > n_blocks:
            raise ValueError(
                f"batch_size={bs} is larger than the {n_blocks} train blocks of "
                f"block_size={self.cfg.block_size}; use batch_size <= {n_blocks} or a smaller block_size")
        return n_blocks // bs

    def _epoch_permutation(self, epoch: int) -> torch.Tensor:
        """Block order of one epoch, a function of (seed, epoch) only; the last one is memoised."""
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            gen = generator_for(self.cfg.seed, epoch, stream=3)
            self._perm_cache = (epoch, torch.randperm(self.blocks["train"].shape[0], generator=gen))
        return self._perm_cache[1]

    def train_batch(self, step: int) -> Batch:
        """``(inputs, targets)`` of step ``step``: slice ``step % E`` of epoch ``step // E``'s permutation."""
        if self.stream is not None:
            return self.train_shard(step, 0, 1)
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        per_epoch = self.batches_per_epoch()
        epoch, index = divmod(step, per_epoch)
        bs = self.cfg.batch_size
        rows = self._epoch_permutation(epoch)[index * bs:(index + 1) * bs]
        block = self.blocks["train"][rows]
        return block[:, :-1].to(self.device), block[:, 1:].to(self.device)

    def train_shard(self, step: int, dp_rank: int, dp_size: int) -> Batch:
        """Coordinate ``dp_rank``'s share of step ``step``; dataset=parquet reads only its own rows."""
        if self.stream is None:
            return super().train_shard(step, dp_rank, dp_size)
        inputs, targets = self.stream.shard(step, dp_rank, dp_size)
        return inputs.to(self.device), targets.to(self.device)

    def loss(self, model: nn.Module, batch: Batch, step: int) -> torch.Tensor:
        """Mean next-token cross-entropy over every target of the batch."""
        with seeded_rng(self.cfg.seed, step, self.device):
            logits = model(input_ids=self.inputs(batch), use_cache=False).logits
        return self.loss_on(logits, self.targets(batch))

    # ------------------------------------------------------------------ blocks
    def model_blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """embed, each decoder layer, final norm, lm_head (see :func:`text_models.decoder_blocks`).

        GPT-2 ties ``lm_head.weight`` to the token embedding, so that one parameter is in
        both the first and the last block."""
        return tm.decoder_blocks(model)

    def loss_on(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits (in float32 whatever the model dtype) over all targets."""
        return F.cross_entropy(outputs.float().reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Loss, perplexity (exp of total NLL / total targets), next-token accuracy per held-out split."""
        was_training = model.training
        model.eval()
        try:
            out: dict[str, float] = {}
            for split in self._eval_splits():
                out.update(self._evaluate_split(model, split))
            return out
        finally:
            model.train(was_training)

    def items_per_step(self) -> int:
        """Tokens predicted per global batch."""
        return self.cfg.batch_size * self.cfg.block_size

    def describe(self) -> dict[str, Any]:
        """Data source, tokenizer, split sizes and model, as recorded in the run summary."""
        return {
            "dataset": self.cfg.dataset,
            "source": self._source(),
            "tokenizer": self.tokenizer_info["kind"],
            "tokenizer_path": self.tokenizer_info["source"],
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "block_size": self.cfg.block_size,
            "block_convention": "blocks of block_size+1 tokens, stride block_size; inputs=block[:-1], targets=block[1:]",
            "documents": {s: len(self.corpus[s]) for s in td.SPLITS},
            "blocks": {s: int(self.blocks[s].shape[0]) for s in td.SPLITS},
            "tokens": {s: int(self.streams[s].numel()) for s in td.SPLITS},
            "predicted_tokens": {s: int(self.blocks[s].shape[0]) * self.cfg.block_size for s in td.SPLITS},
            "model": self.cfg.model,
            "model_dir": self.model_dir,
            "architecture": families.model_shape(self.cfg) or families.shape_from_config(self._config.to_dict()),
            "parameters": self.parameter_count(),
            "lora": self._lora_summary or (self.lora.describe() if self.lora else None),
            "context": tm.context_length(self._config),
            "attn_implementation": self.cfg.attn_implementation,
            "batches_per_epoch": (self.batches_per_epoch() if self.stream is not None
                                  else int(self.blocks["train"].shape[0]) // self.cfg.batch_size),
            # dataset=parquet: documents/blocks/tokens above are the bounded samples (tokenizer, evaluation)
            "parquet": self.parquet.describe() if self.parquet is not None else None,
        }

    # ------------------------------------------------------------------ helpers
    def parameter_count(self) -> int:
        """Parameters of the model (counted on the meta device if it was not built yet)."""
        if self._n_params is None:
            self._n_params = tm.count_parameters(self._config)
        return self._n_params

    def _source(self) -> str:
        if self.parquet is not None:
            return f"parquet shards under {self.cfg.data_root} (column {self.cfg.text_column!r}), streamed"
        if self.cfg.dataset == "pydoc":
            return (f"Python {platform.python_version()} documentation topics (pydoc_data.topics, "
                    "standard library), split by topic ~90/5/5 -- an OFFLINE STAND-IN, NOT WikiText-2; "
                    "its perplexities are not comparable with WikiText-2 numbers")
        if self.cfg.data_root:
            found = td.find_wikitext_files(Path(self.cfg.data_root).expanduser())
            if found is not None:
                return f"WikiText-2 raw, local {found[0]} files: {found[1]['train']} (+ validation, test)"
        return "WikiText-2 raw (wikitext-2-raw-v1) from the Hugging Face hub"

    def _eval_splits(self) -> tuple[str, ...]:
        return ("validation", "test") if self.cfg.eval_test else ("validation",)

    def _evaluate_split(self, model: nn.Module, split: str) -> dict[str, float]:
        """Score every block of ``split`` in chunks of eval_batch_size blocks."""
        blocks, prefix = self.blocks[split], _EVAL_PREFIX[split]
        nll_sums: list[float] = []
        counts: list[int] = []
        correct = 0
        for start in range(0, blocks.shape[0], self.cfg.eval_batch_size):
            chunk = blocks[start:start + self.cfg.eval_batch_size].to(self.device)
            logits = model(input_ids=chunk[:, :-1], use_cache=False).logits.float()
            targets = chunk[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
            nll_sums.append(float(nll))
            counts.append(targets.numel())
            correct += int((logits.argmax(-1) == targets).sum())
        total_nll, total = sum(nll_sums), sum(counts)
        ppl = td.perplexity_comparison(nll_sums, counts)
        return {
            f"{prefix}_loss": total_nll / total,
            f"{prefix}_ppl": ppl["ppl"],
            f"{prefix}_accuracy": correct / total,
            f"{prefix}_tokens": float(total),
            f"{prefix}_ppl_seed_mean_exp_batch_loss": ppl["ppl_seed_mean_exp_batch_loss"],
        }

