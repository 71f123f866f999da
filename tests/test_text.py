"""The text task: corpora, packing, perplexity, models and the Task contract (CPU, offline)."""

from __future__ import annotations

import math
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import torch.nn.functional as F

from paso_core.config import ConfigError, RunConfig, validate
from paso_core.tasks import text_data as td
from paso_core.tasks import text_models as tm
from paso_core.tasks.text import TextTask

CPU = torch.device("cpu")

WIKI_LINES = [
    " ",
    " = Valkyria Chronicles III = ",
    " ",
    " Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game . ",
    " ",
    " = = Gameplay = = ",
    " ",
    " The game began development in 2010 , carrying over a large portion of the work . ",
    " = Tower Building of the Little Rock Arsenal = ",
    " ",
    " The Tower Building is a building in Little Rock , Arkansas . ",
]


pytestmark = pytest.mark.usefixtures("paso_cache")  # tests/conftest.py: one tokenizer cache per session


def text_cfg(**kw) -> RunConfig:
    base = dict(task="text", dataset="pydoc", model="gpt2-tiny", block_size=64, batch_size=8,
                eval_batch_size=64, seed=0)
    base.update(kw)
    return validate(RunConfig(**base))


@pytest.fixture(scope="module")
def task() -> TextTask:
    return TextTask(text_cfg(), CPU)


# ---------------------------------------------------------------------------- perplexity
def test_perplexity_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 1.0]])
    targets = torch.tensor([0, 2, 1])
    nll_by_hand = 0.0
    for row, t in zip(logits.tolist(), targets.tolist()):
        nll_by_hand += math.log(sum(math.exp(v) for v in row)) - row[t]
    nll = float(F.cross_entropy(logits, targets, reduction="sum"))
    assert nll == pytest.approx(nll_by_hand, rel=1e-6)
    assert td.perplexity(nll, 3) == pytest.approx(math.exp(nll_by_hand / 3), rel=1e-6)
    with pytest.raises(ValueError, match="total_tokens"):
        td.perplexity(1.0, 0)


def test_seed_style_perplexity_is_labelled_and_biased_upward():
    # two batches with mean losses 1 and 3 (10 tokens each): exp(2) vs (e + e^3) / 2
    out = td.perplexity_comparison([10.0, 30.0], [10, 10])
    assert out["ppl"] == pytest.approx(math.exp(2.0))
    assert out["ppl_seed_mean_exp_batch_loss"] == pytest.approx((math.e + math.exp(3.0)) / 2)
    assert out["ppl_seed_mean_exp_batch_loss"] > out["ppl"]


# ---------------------------------------------------------------------------- packing
def test_pack_blocks_loses_and_duplicates_no_target():
    docs = [list(range(1, 8)), [], list(range(10, 30)), [40, 41]]
    eos, bs = 0, 5
    stream = td.concat_with_eos(docs, eos)
    assert stream.tolist() == docs[0] + [eos] + docs[2] + [eos] + docs[3] + [eos]
    blocks = td.pack_blocks(docs, bs, eos)
    n = (len(stream) - 1) // bs
    assert blocks.shape == (n, bs + 1) and blocks.dtype == torch.long
    # every target (stream[1:]) appears exactly once, in order, up to the documented tail
    assert blocks[:, 1:].reshape(-1).tolist() == stream[1:1 + n * bs].tolist()
    assert blocks[:, 0].tolist() == stream[0:n * bs:bs].tolist()
    tail = (len(stream) - 1) % bs
    assert n * bs + tail + 1 == len(stream) and tail < bs


def test_blocks_from_too_short_stream_is_empty():
    assert td.blocks_from_stream(torch.arange(5), 8).shape == (0, 9)


# ---------------------------------------------------------------------------- corpora
def write_tokens(root, lines=WIKI_LINES):
    root.mkdir(parents=True, exist_ok=True)
    for name in td.WIKITEXT_TOKEN_FILES.values():
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_parquet(directory, lines=WIKI_LINES):
    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    # the hub's format: content lines keep their "\n", blank lines are ""
    rows = [line + "\n" if line.strip() else "" for line in lines]
    for name in td.WIKITEXT_PARQUET_FILES.values():
        pd.DataFrame({"text": rows}).to_parquet(directory / name)


def test_wikitext_tokens_files(tmp_path):
    write_tokens(tmp_path)
    corpus = td.load_corpus("wikitext2", str(tmp_path))
    assert set(corpus) == set(td.SPLITS)
    docs = corpus["train"]
    assert len(docs) == 2  # two ` = Title = ` articles; ` = = Gameplay = = ` stays inside
    assert docs[0].startswith(" = Valkyria Chronicles III = ") and "= = Gameplay = =" in docs[0]
    assert docs[1].startswith(" = Tower Building")


@pytest.mark.parametrize("layout", ["hub", "flat"])
def test_wikitext_parquet_files_match_tokens_files(tmp_path, layout):
    write_tokens(tmp_path / "tokens")
    target = tmp_path / "pq" / td.WIKITEXT_HUB_SUBDIR if layout == "hub" else tmp_path / "pq"
    write_parquet(target)
    from_parquet = td.load_corpus("wikitext2", str(tmp_path / "pq"))
    assert from_parquet == td.load_corpus("wikitext2", str(tmp_path / "tokens"))


def test_wikitext_missing_names_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="wiki.train.tokens"):
        td.load_corpus("wikitext2", str(tmp_path))


def test_empty_corpus_is_an_error(tmp_path):
    write_tokens(tmp_path, [" ", "", "   "])
    with pytest.raises(ValueError, match="no non-blank text"):
        td.load_corpus("wikitext2", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="pydoc, wikitext2"):
        td.load_corpus("ptb")


def test_pydoc_split_is_deterministic_and_disjoint():
    a, b = td.load_pydoc_corpus(), td.load_pydoc_corpus()
    assert a == b
    assert all(a[s] for s in td.SPLITS)
    seen = [doc for s in td.SPLITS for doc in a[s]]
    assert len(seen) == len(set(seen))
    total = sum(len(d) for d in seen)
    assert 0.03 < sum(len(d) for d in a["validation"]) / total < 0.15


def test_text_task_on_wikitext_files(tmp_path):
    lines = WIKI_LINES * 20
    write_tokens(tmp_path, lines)
    t = TextTask(text_cfg(dataset="wikitext2", data_root=str(tmp_path), block_size=16, batch_size=4,
                          vocab_size=300), CPU)
    assert "WikiText-2" in t.describe()["source"] and t.vocab_size == 300
    assert math.isfinite(t.evaluate(t.build_model())["val_ppl"])


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_is_cached_and_has_eos(task):
    tok, path = td.cached_bpe_tokenizer(task.corpus["train"], 4096)
    assert path == __import__("pathlib").Path(task.tokenizer_info["source"])
    assert tok.eos_token == td.EOS_TOKEN and tok.eos_token_id == task.eos_id
    assert task.vocab_size == 4096
    text = "def f(x):\n    return x  # ünïcode"
    ids = td.tokenize_documents(tok, [text])[0]
    assert tok.decode(ids) == text


def test_tokenizer_without_eos_is_an_error():
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="no eos token"):
        td.require_eos(NoEos(), "some/dir")


# ---------------------------------------------------------------------------- models
def test_block_size_larger_than_context():
    """Rejected by validate before any launch, and by the task itself for a config that skipped it."""
    with pytest.raises(ConfigError, match=r"block_size=2048.*1024"):
        text_cfg(block_size=2048)
    with pytest.raises(ConfigError, match=r"block_size=64.*32"):
        text_cfg(n_positions=32)
    with pytest.raises(ValueError, match=r"block_size=64.*32"):
        TextTask(RunConfig(task="text", dataset="pydoc", model="gpt2-tiny", block_size=64, n_positions=32), CPU)
    assert tm.lm_config(text_cfg(n_positions=64), vocab_size=300).n_positions == 64


def test_model_options_reach_the_model():
    assert tm.model_dtype(RunConfig()) is torch.float32
    assert tm.model_dtype(RunConfig(dtype="bfloat16")) is torch.bfloat16
    assert tm.model_dtype(RunConfig(task="text", model="local", dtype="auto")) == "auto"
    model = tm.build_lm(text_cfg(attn_implementation="eager", dtype="float16"), vocab_size=300)
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float16


def test_gpt2_configs_have_no_dropout():
    for size in tm.GPT2_SIZES:
        c = tm.gpt2_config(size, 100)
        assert c.resid_pdrop == c.embd_pdrop == c.attn_pdrop == 0.0
    assert tm.gpt2_config("gpt2", 50257).n_layer == 12
    assert 124_000_000 < tm.count_parameters(tm.gpt2_config("gpt2", 50257)) < 125_000_000


def save_local_model(directory, task, n_positions=128, with_eos=True):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = task.tokenizer
    if not with_eos:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    config = GPT2Config(vocab_size=len(task.tokenizer), n_positions=n_positions, n_layer=1, n_embd=32,
                        n_head=2, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    torch.manual_seed(123)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model


def test_local_pretrained_model(tmp_path, task):
    saved = save_local_model(tmp_path, task)
    t = TextTask(text_cfg(model="local", model_dir=str(tmp_path)), CPU)
    model = t.build_model()
    for (name, p), q in zip(model.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(p, q), name
    assert model.config.resid_pdrop == 0.0  # dropout zeroed on load
    kept = tm.lm_config(text_cfg(model="local", model_dir=str(tmp_path), keep_dropout=True), 0, str(tmp_path))
    assert kept.resid_pdrop == 0.1
    assert t.describe()["tokenizer"].startswith("pretrained")
    assert t.parameter_count() == sum(p.numel() for p in saved.parameters())
    loss = t.loss(model, t.train_batch(0), 0)
    assert math.isfinite(loss.item())


def test_local_model_context_and_eos_checks(tmp_path, task):
    save_local_model(tmp_path / "short", task, n_positions=32)
    with pytest.raises(ConfigError, match=r"block_size=64.*32 positions"):  # from config.json, before launch
        text_cfg(model="local", model_dir=str(tmp_path / "short"))
    short = RunConfig(task="text", dataset="pydoc", model="local", model_dir=str(tmp_path / "short"), block_size=64)
    with pytest.raises(ValueError, match=r"block_size=64.*32 positions"):  # the worker's own check
        TextTask(short, CPU)
    save_local_model(tmp_path / "noeos", task, with_eos=False)
    with pytest.raises(ValueError, match="no eos token"):
        TextTask(text_cfg(model="local", model_dir=str(tmp_path / "noeos")), CPU)


def test_modelscope_without_package_says_use_local(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails even if installed
    with pytest.raises(RuntimeError, match="model='local'"):
        TextTask(text_cfg(model="modelscope"), CPU)


# ---------------------------------------------------------------------------- Task contract
def test_build_model_is_identical_per_seed(task):
    a, b = task.build_model(), task.build_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = TextTask(text_cfg(seed=1), CPU).build_model()
    assert not torch.equal(a.transformer.wte.weight, other.transformer.wte.weight)


def test_train_batch_is_a_function_of_seed_and_step(task):
    again = TextTask(text_cfg(), CPU)
    for step in (0, 5, 1000):
        x, y = task.train_batch(step)
        x2, y2 = again.train_batch(step)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    task.train_batch(3)
    assert torch.equal(task.train_batch(1000)[0], again.train_batch(1000)[0])  # no hidden state
    other = TextTask(text_cfg(seed=1), CPU)
    assert not torch.equal(task.train_batch(0)[0], other.train_batch(0)[0])


def test_train_batch_shapes_and_targets(task):
    x, y = task.train_batch(0)
    assert x.shape == y.shape == (8, 64) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one


def test_epoch_covers_train_blocks_once(task):
    per_epoch = task.batches_per_epoch()

    def rows(step: int) -> torch.Tensor:
        return torch.cat([task.train_batch(step)[0], task.train_batch(step)[1][:, -1:]], 1)

    epoch0 = torch.cat([rows(s) for s in range(per_epoch)])
    train = {tuple(r) for r in task.blocks["train"].tolist()}
    got = [tuple(r) for r in epoch0.tolist()]
    assert len(got) == per_epoch * 8 == len(set(got)) and set(got) <= train
    assert len(train) - len(set(got)) < 8  # only the partial last batch is skipped
    assert not torch.equal(rows(0), rows(per_epoch))  # a new permutation each epoch


def test_batch_size_larger_than_blocks(task):
    t = TextTask(text_cfg(batch_size=100_000), CPU)
    with pytest.raises(ValueError, match=r"batch_size=100000.*\d+ train blocks"):
        t.train_batch(0)


def test_shards_average_to_full_batch_loss(task):
    model = task.build_model()
    batch = task.train_batch(2)
    full = task.loss(model, batch, 2)
    parts = [task.loss(model, task.shard(batch, r, 4), 2) for r in range(4)]
    assert (sum(parts) / 4).item() == pytest.approx(full.item(), rel=1e-5)
    assert task.items_per_step() == 8 * 64


def test_adamw_steps_reduce_training_loss(task):
    model = task.build_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    probe = task.train_batch(0)
    with torch.no_grad():
        before = float(task.loss(model, probe, 0))
    for step in range(15):
        loss = task.loss(model, task.train_batch(step), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(task.loss(model, probe, 0))
    assert after < before - 0.5, (before, after)


def test_evaluate(task):
    model = task.build_model()
    model.train()
    metrics = task.evaluate(model)
    assert model.training  # mode restored
    for p in ("val", "test"):
        assert math.isfinite(metrics[f"{p}_ppl"])
        assert metrics[f"{p}_ppl"] == pytest.approx(math.exp(metrics[f"{p}_loss"]), rel=1e-9)
        assert 0.0 <= metrics[f"{p}_accuracy"] <= 1.0
    assert metrics["val_tokens"] == task.blocks["validation"].shape[0] * 64
    # an untrained model is close to uniform over the vocabulary
    assert abs(metrics["val_loss"] - math.log(task.vocab_size)) < 0.5
    # eval batching does not change the corpus perplexity
    small = TextTask(text_cfg(eval_batch_size=7, eval_test=False), CPU)
    m2 = small.evaluate(model)
    assert "test_ppl" not in m2
    assert m2["val_ppl"] == pytest.approx(metrics["val_ppl"], rel=1e-5)


def test_describe(task):
    d = task.describe()
    assert "NOT WikiText-2" in d["source"]
    assert d["vocab_size"] == 4096 and d["model"] == "gpt2-tiny" and d["parameters"] > 0
    assert all(d["blocks"][s] > 0 for s in td.SPLITS)


def test_wikitext_download_failure_is_explained(tmp_path):
    # HF_DATASETS_OFFLINE=1 (set above) makes the hub unreachable, as on a machine without a network
    with pytest.raises(RuntimeError, match="data_root"):
        td.load_corpus("wikitext2", str(tmp_path / "absent"), download=True)


def test_wikitext_incomplete_copy_names_missing_file(tmp_path):
    write_tokens(tmp_path)
    (tmp_path / "wiki.valid.tokens").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: .*wiki.valid.tokens missing"):
        td.load_corpus("wikitext2", str(tmp_path))


def test_local_model_without_tokenizer_files(tmp_path, task):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=1, n_embd=16, n_head=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        TextTask(text_cfg(model="local", model_dir=str(tmp_path)), CPU)
