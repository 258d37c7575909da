"""Causal-LM families beyond Mistral: Llama, Mistral (tied), Qwen2 (attention bias, no BOS, its own ChatML
template) and Gemma2 (logit soft-capping, no SDPA), each a tiny random-init checkpoint saved here with a small
byte-level BPE tokenizer trained here (``make_checkpoint``; the integration tests reuse it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

CORPUS = [
    "What is 12 + 30? 12 + 30 = 42.",
    "Sort 3, 1, 2. The sorted list is 1, 2, 3.",
    "Hi! Hello, how can I help you today?",
    "Name three colours: red, green and blue.",
    "<|user|>\n<|assistant|>\n<|system|>\n",
    "The quick brown fox jumps over the lazy dog.",
]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

# family -> (config kwargs, tokenizer specials: bos, eos, pad, chat template)
FAMILIES = {
    "llama": (dict(model_type="llama", tie_word_embeddings=False), ("<s>", "</s>", None, None)),
    "mistral": (dict(model_type="mistral", tie_word_embeddings=True), ("<s>", "</s>", None, None)),
    "qwen2": (
        dict(model_type="qwen2", tie_word_embeddings=True),
        (None, "<|im_end|>", "<|endoftext|>", CHATML),
    ),
    "gemma2": (
        dict(model_type="gemma2", head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8),
        ("<bos>", "<eos>", "<pad>", None),
    ),
}


def build_tokenizer(bos: str | None, eos: str, pad: str | None, template: str | None):
    """A byte-level BPE (a few hundred tokens) with the given special tokens, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (bos, eos, pad) if t] + (["<|im_start|>"] if template else [])
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tk.token_to_id(bos))]))
    tk.post_processor = processors.Sequence(steps)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad)
    if template:
        tok.chat_template = template
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tok


def make_checkpoint(family: str, out: Path) -> Path:
    """Save a tiny random-init ``family`` model and its tokenizer to ``out`` (an HF directory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    extra, specials = FAMILIES[family]
    tok = build_tokenizer(*specials)
    kwargs = {**DIMS, **extra, "vocab_size": len(tok), "max_position_embeddings": 512}
    kwargs.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if family == "qwen2":  # random init leaves the q/k/v biases at 0: make them count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("proj.bias"):
                    p.normal_(std=0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_dir(request, tmp_path_factory):
    return request.param, make_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def test_checkpoint_tokenizer_and_template_are_kept(family_dir):
    from zephyr.data.chat_template import ZEPHYR_CHAT_TEMPLATE, prompt_ids
    from zephyr.tokenizer import load_tokenizer

    family, d = family_dir
    tok = load_tokenizer(d)
    bos, eos, pad, template = FAMILIES[family][1]
    assert tok.chat_template == (template or ZEPHYR_CHAT_TEMPLATE)
    assert tok.eos_token == eos and tok.pad_token == (pad or eos)
    ids = prompt_ids(tok, [{"role": "user", "content": "Hi!"}], insert_empty_system=False)
    if bos is None:
        assert tok.bos_token_id is None and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    else:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n" if template else "<|assistant|>\n")


def test_tokenizer_without_pad_or_eos_is_one_line(tmp_path):
    from zephyr.tokenizer import load_tokenizer

    build_tokenizer("<s>", "</s>", None, None).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("eos_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = build_tokenizer("<s>", "</s>", None, None)
    tok.eos_token = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no eos_token \(and no pad_token\)"):
        load_tokenizer(tmp_path)


def test_build_model_loads_each_family_with_a_supported_kernel(family_dir, caplog):
    from zephyr.models.mistral import build_model

    family, d = family_dir
    with caplog.at_level(logging.WARNING, logger="zephyr.models.mistral"):
        model = build_model(str(d), attn_implementation="sdpa")
    fallbacks = [r.getMessage() for r in caplog.records if "does not support attn_implementation" in r.getMessage()]
    if family == "gemma2":
        assert model.config._attn_implementation == "eager"
        assert fallbacks == [
            "Gemma2ForCausalLM does not support attn_implementation=sdpa (hardware.attn_implementation); using eager"
        ]
    else:
        # SDPA, routed through model.segment_attention (the default), which is SDPA per packed run
        assert model.config._attn_implementation == "zephyr_segment_sdpa" and fallbacks == []
    assert type(model).__name__.lower().startswith(family)
    assert model.training


def test_random_init_by_model_type_falls_back_too(caplog):
    from zephyr.models.mistral import build_model

    with caplog.at_level(logging.WARNING, logger="zephyr.models.mistral"):
        model = build_model(config={**DIMS, "model_type": "gemma2", "head_dim": 8, "vocab_size": 64})
    assert type(model).__name__ == "Gemma2ForCausalLM" and model.config._attn_implementation == "eager"
    assert sum("using eager" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="model.config.model_type='nope'"):
        build_model(config={**DIMS, "model_type": "nope"})


def _batch(vocab: int, rows: int = 2, length: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, -3:] = -100
    pos = torch.arange(length).expand(rows, length)
    return ids, pos, labels


def test_chunked_logps_equal_full_logps_per_family(family_dir):
    from zephyr.models.mistral import build_model
    from zephyr.modules.base import lm_parts
    from zephyr.objectives.logprobs import completion_logps, logit_softcap, token_logps_from_hidden

    family, d = family_dir
    model = build_model(str(d)).eval()
    assert (logit_softcap(model) == 0.5) if family == "gemma2" else logit_softcap(model) is None
    ids, pos, labels = _batch(model.config.vocab_size)
    with torch.no_grad():
        full = completion_logps(model(input_ids=ids, position_ids=pos).logits, labels)
        body, head = lm_parts(model)
        hidden = body(input_ids=ids, position_ids=pos).last_hidden_state
        chunked = token_logps_from_hidden(
            hidden, head.weight, labels, lm_head_bias=head.bias, chunk_size=5, softcap=logit_softcap(model)
        ).logps
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    if family == "gemma2":  # the (tiny) cap matters: without it the numbers differ
        raw = token_logps_from_hidden(hidden, head.weight, labels, chunk_size=5).logps
        assert not torch.allclose(raw, full, atol=1e-3)


def test_prefix_shared_equals_concat_per_family(family_dir):
    """The DPO pair forward gives the same log-probs in both layouts (the 4-D mask works for every family)."""
    from zephyr.data.collate import collate_pairs, collate_pairs_shared
    from zephyr.models.mistral import build_model
    from zephyr.modules.pair_forward import pair_logps

    family, d = family_dir
    model = build_model(str(d)).eval()
    g = torch.Generator().manual_seed(2)
    v = model.config.vocab_size

    def ids(n):
        return torch.randint(0, v, (n,), generator=g).tolist()

    pairs = [
        {"prompt": ids(5), "chosen": ids(4), "rejected": ids(3), "index": 0},
        {"prompt": ids(3), "chosen": ids(2), "rejected": ids(5), "index": 1},
    ]
    pad = 0
    with torch.no_grad():
        concat = pair_logps(model, collate_pairs(pairs, pad_id=pad), chunked=True)
        shared = pair_logps(model, collate_pairs_shared(pairs, pad_id=pad), chunked=True)
        full = pair_logps(model, collate_pairs(pairs, pad_id=pad), chunked=False)
    torch.testing.assert_close(shared.logps, concat.logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(concat.logps, full.logps, atol=1e-5, rtol=1e-5)


def test_memory_estimate_reads_the_checkpoints_config(tmp_path, compose):
    from zephyr.models.mistral import count_parameters
    from zephyr.scale.memory import estimates_for_config, render_table

    d = make_checkpoint("llama", tmp_path / "llama")
    from transformers import AutoModelForCausalLM

    expected = count_parameters(AutoModelForCausalLM.from_pretrained(d))
    _, facts = estimates_for_config(compose(f"model.path={d}"))
    assert facts["n_params"] == expected and facts["model_source"] == "checkpoint"
    _, tiny = estimates_for_config(compose())
    assert tiny["n_params"] != expected and tiny["model_source"] == "model.config"
    # Qwen2's q/k/v biases and Gemma2's extra norms are counted too
    for family in ("qwen2", "gemma2"):
        fd = make_checkpoint(family, tmp_path / family)
        _, f = estimates_for_config(compose(f"model.path={fd}"))
        assert f["n_params"] == count_parameters(AutoModelForCausalLM.from_pretrained(fd))
    title = render_table(*estimates_for_config(compose(f"model.path={d}"))).title
    assert f"{expected:,} params" in title and "0.00 B" not in title


def test_memory_estimate_counts_lora_and_a_4bit_base(tmp_path, compose):
    from zephyr.scale.memory import NF4_BYTES, estimates_for_config

    d = make_checkpoint("llama", tmp_path / "llama")
    cfg = json.loads((d / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    r = 4
    # per layer: q (h->h), k/v (h->kv), o (h->h), gate/up (h->I), down (I->h)
    hand = layers * r * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 3)
    rows, facts = estimates_for_config(compose(f"model.path={d}", "adapter=lora", "adapter.r=4"))
    assert facts["trainable_params"] == hand and facts["adapter"] == "lora"
    full_rows, full = estimates_for_config(compose(f"model.path={d}"))
    auto = {r.strategy: r for r in rows}["auto"]
    assert auto.grads == hand * 4 and auto.params == (hand + full["n_params"]) * 4
    q = compose(f"model.path={d}", "adapter=qlora", "adapter.r=4", "adapter.target_modules=[q_proj,v_proj]")
    qrows, qfacts = estimates_for_config(q)
    assert qfacts["trainable_params"] == layers * r * ((h + h) + (h + kv))
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    qauto = {r.strategy: r for r in qrows}["auto"]
    base = linear * NF4_BYTES + (full["n_params"] - linear) * 2
    assert qauto.params == pytest.approx(qfacts["trainable_params"] * 4 + base)


def test_lora_activations_count_peft_dropout_copies_by_hand(tmp_path, compose):
    """Each adapted linear keeps its dropout output (fp32 here), the bool mask and the r-wide lora_A output."""
    from zephyr.scale.memory import estimates_for_config

    d = make_checkpoint("llama", tmp_path / "llama")
    cfg = json.loads((d / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    r, tokens = 4, 2 * 64  # data.batch_size=2 rows x data.max_length=64 (dSFT: one row per sequence)
    ins = layers * (h * 6 + inter)  # q/k/v/o/gate/up read h features (o: heads x head_dim = h), down reads I
    size = [f"model.path={d}", "data.batch_size=2", "data.max_length=64"]
    full = {x.strategy: x for x in estimates_for_config(compose(*size))[0]}["auto"]
    for dropout, hand in ((0.05, tokens * (ins * (4 + 1) + layers * 7 * r * 4)), (0.0, tokens * layers * 7 * r * 4)):
        over = [*size, "adapter=lora", f"adapter.r={r}", f"adapter.dropout={dropout}"]
        lora = {x.strategy: x for x in estimates_for_config(compose(*over))[0]}["auto"]
        assert lora.activations - full.activations == hand
    # gradient checkpointing: only the layer being recomputed holds them
    ckpt = [*size, "model.gradient_checkpointing=true"]
    full_gc = {x.strategy: x for x in estimates_for_config(compose(*ckpt))[0]}["auto"]
    lora_gc = {x.strategy: x for x in estimates_for_config(compose(*ckpt, "adapter=lora", f"adapter.r={r}"))[0]}["auto"]
    assert lora_gc.activations - full_gc.activations == pytest.approx(tokens * (ins * 5 + layers * 7 * r * 4) / layers)
