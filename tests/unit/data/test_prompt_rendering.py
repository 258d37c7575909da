"""One prompt rendering: training, serve/generate/MT-Bench (Generator), the feedback backend and the demo agree.

The regression: dSFT/dDPO rendered prompts with an inserted empty system turn while ``zephyr serve`` and
``zephyr generate`` rendered them without one, so a model was queried in a format it was not trained on.
Now an export records its ``prompt_format`` and every generation path renders from it.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_CONFIG

NO_SYSTEM = [{"role": "user", "content": "Convert 3 km to m."}]
WITH_SYSTEM = [{"role": "system", "content": "Answer briefly."}, *NO_SYSTEM]
REPLY = {"role": "assistant", "content": "3 km = 3000 m."}
EMPTY_SYSTEM_IDS = [1, 523, 28766, 6574, 28766, 28767, 13, 2, 28705, 13]  # <s><|system|>\n</s>\n


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of one tiny model: trained with and without the inserted empty system turn."""
    from zephyr.models.export import export_hf
    from zephyr.models.mistral import build_model
    from zephyr.tokenizer import load_tokenizer

    model, tok = build_model(config=TINY_CONFIG, init_seed=0).eval(), load_tokenizer()
    root = tmp_path_factory.mktemp("exports")
    return {
        flag: export_hf(model, tok, root / f"ies_{flag}", prompt_format={"insert_empty_system": flag})
        for flag in (True, False)
    }


def _training_prompt_ids(tokenizer, messages, insert_empty_system):
    from zephyr.data.preference import tokenize_pair
    from zephyr.data.sft import tokenize_conversation

    pair = tokenize_pair(
        tokenizer,
        {"chosen": [*messages, REPLY], "rejected": [*messages, {"role": "assistant", "content": "300 m."}]},
        insert_empty_system=insert_empty_system,
    )
    sft = tokenize_conversation(tokenizer, [*messages, REPLY], insert_empty_system=insert_empty_system)
    dpo_prompt = list(pair["prompt_input_ids"])
    assert list(sft.input_ids[: len(dpo_prompt)]) == dpo_prompt  # the dSFT row starts with the same prompt
    return dpo_prompt


@pytest.mark.parametrize("insert_empty_system", [True, False])
@pytest.mark.parametrize("messages", [NO_SYSTEM, WITH_SYSTEM], ids=["no_system", "system"])
def test_every_path_renders_the_training_prompt(tokenizer, exports, messages, insert_empty_system):
    from zephyr.generation import Generator, LocalCheckpointBackend

    export = exports[insert_empty_system]
    want = _training_prompt_ids(tokenizer, messages, insert_empty_system)
    served = Generator.from_dir(export)  # zephyr serve, zephyr generate, MT-Bench answers, eval judges
    assert served.prompt_ids(messages) == want
    assert LocalCheckpointBackend(str(export)).generator.prompt_ids(messages) == want  # feedback pool member
    demo = LocalCheckpointBackend(export, "dsft")  # the feedback/demo pool member, batched
    assert demo.generator.insert_empty_system is insert_empty_system
    reply = demo.chat(messages, temperature=0.0, max_tokens=1)
    assert reply.prompt_tokens == len(want)
    if messages is NO_SYSTEM:
        assert (want[: len(EMPTY_SYSTEM_IDS)] == EMPTY_SYSTEM_IDS) is insert_empty_system


def test_export_records_prompt_format_and_plain_checkpoints_render_as_given(tokenizer, exports, tmp_path):
    from zephyr.data.chat_template import prompt_ids
    from zephyr.models.export import load_prompt_format

    record = json.loads((exports[True] / "zephyr_export.json").read_text())
    assert record["prompt_format"] == {"insert_empty_system": True}
    assert load_prompt_format(exports[False]) == {"insert_empty_system": False}
    assert load_prompt_format(tmp_path) == {"insert_empty_system": False}  # not a zephyr export: as given
    plain = tokenizer(tokenizer.apply_chat_template(NO_SYSTEM, tokenize=False, add_generation_prompt=True))
    assert prompt_ids(tokenizer, NO_SYSTEM, insert_empty_system=False) == plain["input_ids"]


def test_train_export_records_the_data_setting(compose):
    from zephyr.data.chat_template import prompt_format

    assert prompt_format(compose().data) == {"insert_empty_system": True}
    assert prompt_format(compose("data.insert_empty_system=false").data) == {"insert_empty_system": False}
    assert prompt_format(compose("+experiment=dpo_toy").data) == {"insert_empty_system": True}


def test_a_template_that_writes_its_own_bos_gets_exactly_one(exports):
    """Llama-3-style templates start with ``{{ bos_token }}``: training and generation ids hold one BOS, not two."""
    from zephyr.data.chat_template import prompt_ids
    from zephyr.data.sft import tokenize_conversation
    from zephyr.tokenizer import load_tokenizer

    tok = load_tokenizer()
    plain = _training_prompt_ids(tok, NO_SYSTEM, True)
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    bos = tok.bos_token_id
    dpo_prompt = _training_prompt_ids(tok, NO_SYSTEM, True)
    sft = tokenize_conversation(tok, [*NO_SYSTEM, REPLY], insert_empty_system=True)
    served = prompt_ids(tok, NO_SYSTEM, insert_empty_system=True)
    assert dpo_prompt == served == plain  # the template's BOS replaced the tokenizer's, nothing else moved
    assert sft.input_ids[0] == bos and sft.input_ids[1] != bos
    assert served.count(bos) == 1
