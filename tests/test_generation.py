"""Generation engines, prompt files and the answer parser."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hierarcaps.config import GeneratorConfig
from hierarcaps.engines import generation
from hierarcaps.engines.generation import GeneratorError, cut_at_stop, gguf_cache_dir, load_generator
from hierarcaps.parsing import ParseError, format_answer, parse_answer
from hierarcaps.prompts import PROMPT_DIR, PromptError, available_prompts, load_prompt

GOOD = """1: dog
2: brown dog
3: brown dog on a beach
Negative:
1: cat
2: black dog
3: brown dog in a park
4: A brown dog sleeps on a sofa at home."""


# ---------------------------------------------------------------- parser


def test_parse_good_answer():
    answer = parse_answer(GOOD)
    assert answer.positive == ["dog", "brown dog", "brown dog on a beach"]
    assert answer.negative[0] == "cat" and answer.negative[3] == "A brown dog sleeps on a sofa at home."
    assert answer.hierarchy("A brown dog runs.") == ["dog", "brown dog", "brown dog on a beach", "A brown dog runs."]


def test_parse_ignores_chatter_around_the_answer_and_a_copied_tier4():
    text = "Sure! Here it is:\n\n" + GOOD.replace("3: brown dog on a beach", "3: brown dog on a beach\n4: the caption")
    text += "\n\nThis hierarchy goes from generic to specific.\n1: and a second list"
    answer = parse_answer(text)
    assert answer.positive == ["dog", "brown dog", "brown dog on a beach"]
    assert len(answer.negative) == 4


def test_format_answer_round_trips():
    answer = parse_answer(GOOD)
    assert parse_answer(format_answer(answer.hierarchy("cap"), answer.negative)) == answer


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("A brown dog runs on the beach.", "no_negative_block"),
        (GOOD.split("Negative:")[0], "no_negative_block"),  # partial: stopped before the negatives
        (GOOD.rsplit("\n", 1)[0], "negative_missing_tiers"),  # partial: 3 negative tiers
        (GOOD.replace("1: dog\n2: brown dog", "2: brown dog\n1: dog"), "positive_out_of_order"),  # shuffled
        (GOOD.replace("3: brown dog in a park", "4: brown dog in a park"), "negative_out_of_order"),
        (GOOD.replace("2: brown dog\n", "2:\n"), "positive_empty_tier"),
        (GOOD.replace("3: brown dog on a beach", "3: brown dog on a beach\nI think this is good"), "chatter_in_answer"),
        (GOOD + "\n5: a fifth tier\n6: and more", "negative_too_many_tiers"),
        ("Negative:\n1: a\n2: b\n3: c\n4: d", "positive_missing_tiers"),
    ],
)
def test_parse_rejects_with_reason(text, reason):
    with pytest.raises(ParseError) as err:
        parse_answer(text)
    assert err.value.reason == reason


# ---------------------------------------------------------------- prompt files


@pytest.mark.parametrize("name", available_prompts())
def test_every_prompt_file_loads_and_renders(name):
    prompt = load_prompt(name)
    assert prompt.placeholders, f"{name} has no placeholders"
    assert "caption" in prompt.placeholders
    values = {key: f"<{key}>" for key in prompt.placeholders}
    text = prompt.render(**values)
    assert "<caption>" in text and "$" not in text and not text.startswith("#")
    assert len(prompt.sha256) == 64


def test_prompts_folder_and_symlink():
    assert {"seed_v1", "augment_v1"} <= set(available_prompts())
    root_link = Path(__file__).resolve().parents[1] / "prompts"
    assert root_link.resolve() == PROMPT_DIR.resolve()


def test_render_refuses_missing_and_unknown_values():
    prompt = load_prompt("augment_v1")
    with pytest.raises(PromptError, match="missing"):
        prompt.render(caption="x")
    with pytest.raises(PromptError, match="unknown"):
        prompt.render(caption="x", examples="y", extra="z")
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("no_such_prompt")


def test_prompt_hash_follows_file_content(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# doc\nCaption: $caption\n")
    first = load_prompt(str(path))
    path.write_text("# doc\nCaption: $caption\nAnswer:\n")
    assert load_prompt(str(path)).sha256 != first.sha256
    assert first.render(caption="a cat") == "Caption: a cat"


# ---------------------------------------------------------------- transformers back-end (tiny Llama, the paper's class)

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer LlamaForCausalLM and a word-level tokenizer with a chat template, saved like a hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # Byte-level BPE like Llama/SmolLM2 (transformers' stop-string matching needs a real decoder).
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["1: dog\n2: brown dog\n3: brown dog on a beach\nNegative:\n1: cat", "user: assistant: a cat sleeps in the park"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_transformers_generator_tiny_llama(tiny_llama):
    cfg = GeneratorConfig(model=str(tiny_llama), batch_size=2, max_new_tokens=6)
    gen = load_generator(cfg)
    assert gen.model_id == str(tiny_llama)
    prompts = ["a brown dog", "the cat sleeps on a beach in the park", "dog"]
    greedy = gen.generate(prompts)
    assert len(greedy) == 3 and all(isinstance(t, str) for t in greedy)
    assert any(t.strip() for t in greedy)
    assert gen.generate(prompts) == greedy  # greedy is deterministic
    # Left padding: a prompt batched with a longer one gets the answer it gets alone.
    assert gen.generate([prompts[0]]) == greedy[:1]
    sampled = gen.generate(prompts, temperature=1.0, seed=7)
    assert gen.generate(prompts, temperature=1.0, seed=7) == sampled
    assert len({tuple(gen.generate(prompts, temperature=1.0, seed=s)) for s in range(4)}) > 1


def test_transformers_generator_stop_strings(tiny_llama):
    free = load_generator(GeneratorConfig(model=str(tiny_llama), max_new_tokens=8)).generate(["a brown dog"])[0]
    assert len(free) >= 4, f"the tiny model's answer is too short to test stop strings: {free!r}"
    stop = free[2:4]  # whatever the random model writes, stop in the middle of it
    cut = load_generator(GeneratorConfig(model=str(tiny_llama), max_new_tokens=8, stop=[stop])).generate(["a brown dog"])[0]
    assert cut == free[: free.index(stop)]


def test_structured_decoding_forces_the_answer_format(tiny_llama):
    """Even a random 2-layer model writes a parsable answer when the line skeleton is forced."""
    from hierarcaps.parsing import LINE_PREFIXES

    cfg = GeneratorConfig(model=str(tiny_llama), batch_size=3, max_new_tokens=260, structured=True)
    gen = load_generator(cfg)
    prompts = ["a brown dog", "the cat sleeps on a beach in the park", "dog", "cat"]
    for answers in (gen.generate(prompts), gen.generate(prompts, temperature=1.0, seed=1)):
        for text in answers:
            lines = text.strip().split("\n")
            assert [line.split(":")[0] + ":" for line in lines if ":" in line][:3] == list(LINE_PREFIXES[:3]), text
            answer = parse_answer(text)
            assert len(answer.positive) == 3 and len(answer.negative) == 4
            assert text.count("\n") == 8  # 7 tier lines + the header, then EOS: nothing after the last tier


def test_structured_decoding_refuses_copied_and_shrinking_lines(tiny_llama):
    from transformers import AutoTokenizer

    from hierarcaps.engines.constrained import LineTemplate
    from hierarcaps.parsing import GROWING_LINES, LINE_PREFIXES

    template = LineTemplate(AutoTokenizer.from_pretrained(tiny_llama), LINE_PREFIXES, 5, 1, growing=GROWING_LINES)
    template.line[0], template.done[0] = 1, ["dog"]
    for content, ok in [("", False), (" ", False), (" Dog.", False), (" brown dog", True)]:
        template.content[0] = content
        assert template.may_end_line(0) is ok, content
    template.line[0], template.done[0] = 2, ["dog", "brown dog"]
    for content, ok in [(" park", False), (" dog park", True), (" brown dog on a beach", True)]:
        template.content[0] = content
        assert template.may_end_line(0) is ok, content


def test_cut_at_stop_and_cache_key(tmp_path):
    assert cut_at_stop("1: a\n2: b\n\n\nchatter", ["\n\n\n", "zzz"]) == "1: a\n2: b"
    assert cut_at_stop("no stop here", ["\n\n"]) == "no stop here"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    first = gguf_cache_dir(gguf)
    gguf.write_bytes(b"x" * 11)
    assert gguf_cache_dir(gguf) != first and first.name.startswith("m-")


# ---------------------------------------------------------------- vLLM back-end


def test_importing_generation_does_not_import_vllm():
    code = "import sys, hierarcaps.engines.generation; assert 'vllm' not in sys.modules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vllm_backend_without_vllm_names_the_extra():
    if "vllm" in sys.modules or _installed("vllm"):
        pytest.skip("vLLM is installed here")
    with pytest.raises(GeneratorError, match=r"hierarcaps\[vllm\]"):
        load_generator(GeneratorConfig(backend="vllm", model="meta-llama/Llama-2-7b-chat-hf"))


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_structured_regex_accepts_the_format_the_parser_reads():
    import re

    answer = format_answer(["dog", "brown dog", "brown dog on a beach", "cap"], ["cat", "black dog", "dog in a park", "A dog sleeps."])
    assert re.fullmatch(generation.STRUCTURED_REGEX, answer + "\n")


# ---------------------------------------------------------------- OpenAI-compatible server


class _Server:
    """A canned /chat/completions endpoint: answers "echo: <prompt>", failing the first `fail_first` requests with 500."""

    def __init__(self, fail_first: int = 0):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.fail_first = fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if server.fail_first > 0:
                    server.fail_first -= 1
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                prompt = body["messages"][-1]["content"]
                reply = {"choices": [{"message": {"role": "assistant", "content": f"echo: {prompt}\n\n\nchatter"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_server_generator(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sekrit")
    with _Server() as server:
        cfg = GeneratorConfig(
            backend="openai", model="served-model", base_url=server.url, api_key_env="TEST_LLM_KEY",
            stop=["\n\n\n"], max_new_tokens=50, batch_size=4,
        )
        gen = load_generator(cfg)
        prompts = [f"caption {i}" for i in range(6)]
        assert gen.generate(prompts, temperature=0.5, seed=3) == [f"echo: caption {i}" for i in range(6)]  # in order, cut at stop
    assert len(server.requests) == 6
    first = server.requests[0]
    assert first["model"] == "served-model" and first["messages"][0]["role"] == "user"
    assert (first["temperature"], first["seed"], first["max_tokens"], first["stop"]) == (0.5, 3, 50, ["\n\n\n"])
    assert "structured_outputs" not in first
    assert all(h.get("Authorization") == "Bearer sekrit" for h in server.headers)


def test_openai_server_retries_5xx_then_gives_up(monkeypatch):
    monkeypatch.setattr(generation.OpenAIServerGenerator, "backoff_seconds", 0.01)
    with _Server(fail_first=1) as server:
        gen = load_generator(GeneratorConfig(backend="openai", model="m", base_url=server.url, api_key_env="", stop=["\n\n\n"]))
        assert gen.generate(["one"]) == ["echo: one"]
        assert len(server.requests) == 2  # one 500, then the retry
    with _Server(fail_first=100) as server:
        gen = load_generator(GeneratorConfig(backend="openai", model="m", base_url=server.url, api_key_env="", stop=["\n\n\n"]))
        with pytest.raises(GeneratorError, match="gave up"):
            gen.generate(["one"])
        assert len(server.requests) == gen.retries + 1


def test_openai_backend_needs_base_url():
    with pytest.raises(GeneratorError, match="base_url"):
        load_generator(GeneratorConfig(backend="openai"))


def test_openai_server_connection_errors_are_retried_then_reported(monkeypatch):
    import socket

    monkeypatch.setattr(generation.OpenAIServerGenerator, "backoff_seconds", 0.01)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gen = load_generator(GeneratorConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=""))
    with pytest.raises(GeneratorError, match=r"gave up after 5 attempts \(ConnectError"):
        gen.generate(["one"])


def test_vllm_generator_wiring_with_a_stub_module(monkeypatch):
    """The calls VLLMGenerator makes (LLM, SamplingParams, structured outputs, chat) against a stand-in `vllm`."""
    import types
    from dataclasses import dataclass, field

    @dataclass
    class StructuredOutputsParams:
        regex: str | None = None

    @dataclass
    class SamplingParams:
        temperature: float = 1.0
        top_p: float = 1.0
        max_tokens: int = 16
        stop: list | None = None
        seed: int | None = None
        structured_outputs: StructuredOutputsParams | None = None

    @dataclass
    class LLM:
        model: str
        dtype: str = "auto"
        tensor_parallel_size: int = 1
        seed: int = 0
        chats: list = field(default_factory=list)

        def chat(self, conversations, sampling_params, use_tqdm=True):
            self.chats.append((conversations, sampling_params))
            out = types.SimpleNamespace
            return [out(outputs=[out(text=f"{c[0]['content']} done\n\n\nmore")]) for c in conversations]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    vllm.sampling_params = types.ModuleType("vllm.sampling_params")
    vllm.sampling_params.StructuredOutputsParams = StructuredOutputsParams
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", vllm.sampling_params)
    cfg = GeneratorConfig(backend="vllm", model="meta-llama/Llama-2-7b-chat-hf", dtype="float16", tensor_parallel_size=2,
                          structured=True, stop=["\n\n\n"], max_new_tokens=160)
    gen = load_generator(cfg)
    assert (gen.llm.model, gen.llm.dtype, gen.llm.tensor_parallel_size) == (cfg.model, "float16", 2)
    assert gen.generate(["a", "b"], temperature=0.7, seed=5) == ["a done", "b done"]
    conversations, params = gen.llm.chats[0]
    assert conversations == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    assert (params.temperature, params.seed, params.max_tokens, params.stop) == (0.7, 5, 160, ["\n\n\n"])
    assert params.structured_outputs.regex == generation.STRUCTURED_REGEX
    gen.generate(["c"])
    assert gen.llm.chats[1][1].temperature == 0.0 and gen.llm.chats[1][1].top_p == 1.0  # greedy by default
