"""Chat templates: rendered exactly as transformers' apply_chat_template(tokenize=False) renders them.

The reference is transformers itself (a test-only extra; no torch needed): a PreTrainedTokenizerFast
with the model's special tokens and the real template text. Templates are real models' templates
(tests/data/templates, README there) and SmolLM2's own, read from its GGUF.
"""

from pathlib import Path

import pytest
from conftest import model_path

from llamapy.chat import BUILTIN_TEMPLATES, ChatTemplateError, prompt_tokens, render
from llamapy.chat.templates import detect_format

TEMPLATES = Path(__file__).parent / "data" / "templates"
# file → (bos_token, eos_token) as the model's tokenizer_config.json names them
REAL = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct.jinja": (None, "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "google-gemma-3-it.jinja": ("<bos>", "<eos>"),
}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
CONVERSATIONS = {
    "user only": [{"role": "user", "content": "What is the capital of France?"}],
    "system and user": [SYSTEM, {"role": "user", "content": "Hello!"}],
    "multi-turn": [
        SYSTEM,
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "  And 3+3?  "},
        {"role": "assistant", "content": "6, of course.\n"},
        {"role": "user", "content": "Thanks — ça va? 日本語も"},
    ],
}


@pytest.fixture(scope="module")
def transformers_render():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")

    def render_with_transformers(template, messages, bos, eos, add_generation_prompt, tools=None):
        vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(x for x in (bos, eos) if x)}}
        backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                                   unk_token="<unk>")
        tok.chat_template = template
        return tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)

    return render_with_transformers


@pytest.fixture(scope="module")
def smollm2():
    import llamapy

    return llamapy.load(model_path("smollm2"))


@pytest.fixture(scope="module")
def gemma3():
    import llamapy

    return llamapy.load(model_path("gemma3"))


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(REAL))
def test_real_templates_match_transformers(transformers_render, name, conversation, add_generation_prompt):
    template = (TEMPLATES / name).read_text(encoding="utf-8")
    bos, eos = REAL[name]
    messages = CONVERSATIONS[conversation]
    expected = transformers_render(template, messages, bos, eos, add_generation_prompt)
    ours = render(template, messages, add_generation_prompt, bos_token=bos, eos_token=eos)
    assert ours == expected


def test_tools_reach_the_template_as_transformers_passes_them(transformers_render):
    template = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    tools = [{"type": "function", "function": {"name": "weather", "description": "Météo <now>",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = CONVERSATIONS["system and user"]
    expected = transformers_render(template, messages, None, "<|im_end|>", True, tools=tools)
    assert render(template, messages, True, tools=tools, bos_token=None, eos_token="<|im_end|>") == expected
    assert "Météo <now>" in expected  # tojson neither escapes HTML nor non-ASCII


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_smollm2_own_template_through_the_model_api(smollm2, transformers_render, conversation):
    template = smollm2.gguf.kv["tokenizer.chat_template"]
    tok = smollm2.tokenizer
    bos, eos = tok.token_text(tok.bos_id), tok.token_text(tok.eos_id)
    for add in (True, False):
        messages = CONVERSATIONS[conversation]
        expected = transformers_render(template, messages, bos, eos, add)
        assert smollm2.apply_chat_template(messages, add_generation_prompt=add) == expected


def test_apply_chat_template_takes_jinja_text_or_a_builtin_name(smollm2, transformers_render):
    messages = CONVERSATIONS["multi-turn"]
    llama31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
    tok = smollm2.tokenizer
    expected = transformers_render(llama31, messages, tok.token_text(tok.bos_id), tok.token_text(tok.eos_id), True)
    assert smollm2.apply_chat_template(messages, chat_template=llama31) == expected
    assert smollm2.apply_chat_template(messages, chat_template="chatml").startswith("<|im_start|>system\n")
    with pytest.raises(ChatTemplateError, match="--chat-template"):
        smollm2.apply_chat_template(messages, chat_template="no-such-template")


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_builtin_gemma_and_chatml_agree_with_the_real_templates(transformers_render, conversation):
    messages = CONVERSATIONS[conversation]
    gemma3 = (TEMPLATES / "google-gemma-3-it.jinja").read_text(encoding="utf-8")
    expected = transformers_render(gemma3, messages, "<bos>", "<eos>", True)
    assert "<bos>" + render(BUILTIN_TEMPLATES["gemma"], messages, True) == expected
    if messages[0]["role"] == "system":  # Qwen2.5 without tools is plain chatml once a system prompt is given
        qwen = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
        assert render(BUILTIN_TEMPLATES["chatml"], messages, True) == transformers_render(
            qwen, messages, None, "<|im_end|>", True)


@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
def test_every_builtin_renders_each_role(name):
    text = render(BUILTIN_TEMPLATES[name], CONVERSATIONS["multi-turn"], True, bos_token="<s>", eos_token="</s>")
    for message in CONVERSATIONS["multi-turn"]:
        assert message["content"].strip() in text


def test_format_chosen_from_special_tokens():
    assert detect_format(["<bos>", "<start_of_turn>", "<end_of_turn>"]) == "gemma"
    assert detect_format(["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"]) == "llama3"
    assert detect_format(["<|im_start|>", "<|im_end|>"]) == "chatml"
    assert detect_format(["<|user|>", "<|assistant|>", "<|end|>"]) == "phi3"
    assert detect_format(["<|user|>", "<|assistant|>", "</s>"]) == "zephyr"
    assert detect_format(["<s>", "[INST]", "[/INST]"]) == "mistral"
    assert detect_format(["<s>", "</s>"]) == "chatml"


def test_gemma3_without_template_gets_gemma_and_a_single_bos(gemma3, transformers_render):
    assert "tokenizer.chat_template" not in gemma3.gguf.kv
    fmt = gemma3.chat_format()
    assert (fmt.name, fmt.chosen_from_tokens) == ("gemma", True)
    messages = CONVERSATIONS["system and user"]
    # The real Gemma 3 template writes <bos> itself; the tokenizer adds one too: only one may remain.
    real = gemma3.chat_format((TEMPLATES / "google-gemma-3-it.jinja").read_text(encoding="utf-8"))
    ids = prompt_tokens(gemma3, real, real.render(messages))
    assert ids[0] == gemma3.tokenizer.bos_id and ids.count(gemma3.tokenizer.bos_id) == 1
    assert ids == prompt_tokens(gemma3, fmt, fmt.render(messages))
    assert gemma3.tokenizer.token_id("<start_of_turn>") in ids


def test_render_errors_are_one_line_naming_the_flag():
    with pytest.raises(ChatTemplateError, match="--chat-template") as e:
        render("{{ raise_exception('roles must alternate') }}", [])
    assert "roles must alternate" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render("{% for %}", [])
