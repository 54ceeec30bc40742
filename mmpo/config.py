"""The training config: `TrainConfig` and its sections, typed dataclasses with one-line field docs.

The schema lives in code (each field's comment is its documentation); YAML files and `key=value` overrides only
override it, through `mmpo.schema` (`load`, `from_dict`: unknown keys and wrong types name the file and the key).
`ModelConfig` and `LoraConfig` are the model layer's own (`mmpo.models.settings`), `LossTerm` the losses'
(`mmpo.losses`): a `loss:` entry is validated into its loss object once, when the config is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from mmpo.losses import LOSSES, TRL_KNOBS, TRL_LOSS_NAMES, TRL_PARAMS, LossTerm, requires_of
from mmpo.models.settings import LoraConfig, ModelConfig
from mmpo.schema import (
    ConfigError,
    Problems,
    check_choice,
    check_range,
    from_dict,
    load,
    safe_load,
    save,
    to_dict,
)

# The names other modules read from here: this module's sections, and those of the loader (mmpo.schema), the model
# (mmpo.models.settings) and the losses (mmpo.losses) that a training config is made of.
__all__ = ["REPORT_TO", "ConfigError", "DataConfig", "DataSource", "DistillConfig", "LoraConfig", "LossTerm",
           "ModelConfig", "MultiRoundConfig", "PamiConfig", "Problems", "TrainConfig",
           "check_choice", "check_range", "check_report_to", "from_dict", "load", "safe_load", "save", "to_dict"]

NO_ADAPTER_REFERENCE = ("full fine-tuning (lora.enabled: false) has no adapter to disable for the reference: set "
                        "precompute_reference: true")
REPORT_TO = ("tensorboard", "wandb", "mlflow", "trackio", "swanlab")  # experiment trackers (mmpo.metrics)


def check_report_to(names: list[str], where: str = "report_to") -> None:
    """report_to names only trackers mmpo knows (whether each is installed: `mmpo.metrics.check_trackers`)."""
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ConfigError(f"{where}: unknown tracker(s) {unknown}; expected some of {list(REPORT_TO)}")


@dataclass
class DataSource:
    """`data.train: {format, path}`: a set in another layout, read directly (see mmpo.formats)."""

    format: str = "auto"  # a key of mmpo.formats.FORMATS (rlaif_v, trl, llamafactory, swift, ...) or auto
    path: str = ""  # a snapshot folder (parquet / arrow / json / jsonl) or one data file


@dataclass
class DataConfig:
    train: str | DataSource = ""  # pair JSONL (preference stages) or SFT JSONL (stage sft), or {format, path}
    format: str = "mmpo"  # data.train's layout: mmpo (JSONL), or what data.train: {format, path} named
    media_root: str = ""  # folder the records' media paths are relative to ("" = the JSONL's folder)
    max_length: int = 0  # prompt (media tokens included) + answer; longer samples error or skip (0 = the model's context)
    on_bad_record: str = "error"  # error | skip (bad lines, missing media, too long: counted and logged)
    num_workers: int = 0  # DataLoader worker processes decoding and augmenting media
    shuffle: bool = True  # reshuffle each epoch (seeded by seed + epoch, so resume is exact)

    def __post_init__(self):
        check_range(self, max_length=">= 0", num_workers=">= 0")
        if isinstance(self.train, DataSource):  # folded into two plain fields, so the saved config reloads as is
            self.format, self.train = self.train.format, self.train.path
        check_choice(self, on_bad_record=("error", "skip"))


@dataclass
class PamiConfig:
    js_top_k: int = 0  # top-k truncation of the vocabulary for the JS distance (0 = full vocabulary)


@dataclass
class MultiRoundConfig:
    num_rounds: int = 3  # rounds of merge -> fresh LoRA -> reference refresh -> regenerate -> train
    steps_per_round: int = 1000  # optimizer steps per round (mrDPO: ~1,000)
    num_samples: int = 4  # answers sampled per prompt when regenerating pairs
    temperature: float = 1.0  # sampling temperature for regeneration (0 = greedy)
    max_new_tokens: int = 32  # generation length for regeneration
    scorer: str = "exact"  # scorer that ranks sampled answers (exact = the SFT answer as ground truth)
    min_gap: float = 0.0  # keep best-vs-worst pairs whose score gap exceeds this
    gt_weight: float = 0.1  # weight of the NLL guidance term on the ground-truth answer (mrDPO gdpo)
    rebirth: bool = False  # after the rounds, SFT the pre-DPO model on the final model's answers
    rebirth_steps: int = 100  # SFT steps for rebirth tuning
    gt_fallback: bool = True  # chosen = the ground-truth answer when no sample scores as well as it
    save_merged: bool = True  # also save the final merged model to output_dir/model (one folder for eval)

    def __post_init__(self):
        check_range(self, num_rounds=">= 1", steps_per_round=">= 1", num_samples=">= 1", temperature=">= 0",
                    max_new_tokens=">= 1", gt_weight=">= 0", rebirth_steps=">= 1")


@dataclass
class DistillConfig:
    teacher: ModelConfig = field(default_factory=ModelConfig)  # the teacher (same tokenizer as the student)
    mimic_steps: int = 100  # steps of mimic distillation (token-level forward KL on answer tokens)
    mimic_data: str = ""  # SFT JSONL for mimic distillation ("" = data.train)
    mimic_nll_weight: float = 0.0  # add the student's own NLL (LLaVA-MoD kd_lm) with this weight
    preference_steps: int = 100  # steps of preference distillation: the `loss:` terms, the teacher as the reference
    preference_data: str = ""  # pair JSONL for preference distillation (required if preference_steps > 0)
    # DPKD is a stage option, not a LOSSES term: it compares both models' logits token by token, not log-probs
    dpkd: bool = False  # the preference stage runs DPKD (arXiv 2406.19774) instead of the `loss:` terms
    dpkd_beta: float = 0.1  # DPKD's beta
    dpkd_ratio: float = 0.5  # DPKD k: total = (1 - k) * CE(gold) + k * L_DPKD (LMOps dpkd kd_ratio)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "preference_loss": "removed: the preference stage trains the top-level `loss:` terms (e.g. loss: [{name: "
                           "kto_pair, params: {beta: 0.1}}]); for DPKD set distill.dpkd: true",
        "beta": "removed: a loss's beta goes in its `loss:` term's params (loss: [{name: dpo, params: {beta: 0.1}}]); "
                "DPKD's is distill.dpkd_beta"}

    def __post_init__(self):
        check_range(self, mimic_steps=">= 0", preference_steps=">= 0", dpkd_beta="> 0", dpkd_ratio="[0, 1]",
                    mimic_nll_weight=">= 0")


# The schedules' own step settings (their parts are runs of stage dpo / sft with these as max_steps).
STAGE_STEPS = {"multi_round": "multi_round.steps_per_round, multi_round.rebirth_steps",
               "distill": "distill.mimic_steps, distill.preference_steps"}


@dataclass
class TrainConfig:
    stage: str = "dpo"  # dpo | sft | multi_round | distill
    output_dir: str = "runs/train"  # run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/
    seed: int = 0  # seeds torch, numpy, python and the data order
    deterministic: bool = False  # deterministic GPU kernels + cuBLAS workspace (mmpo/determinism.py; README Reproducibility)
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy (and, with adapters off, the reference)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapter settings (lora.enabled false = full fine-tune)
    data: DataConfig = field(default_factory=DataConfig)  # training data
    loss: list[LossTerm] | None = None  # summed terms (unset: one dpo term, or what loss_type says; stage sft: none)
    # TRL's spelling of `loss` (a DPOConfig's loss section carries over; README "Losses"), read into `loss`:
    loss_type: list[str] | str = field(default_factory=list)  # TRL loss type(s), e.g. [sigmoid, sft] (or mmpo names)
    loss_weights: list[float] = field(default_factory=list)  # with loss_type: one weight each (default 1.0)
    beta: float = 0.1  # with loss_type: TRL's beta, for every term
    label_smoothing: float = 0.0  # with loss_type: TRL's label_smoothing (robust, exo_pair, aot: their eps)
    discopop_tau: float = 0.05  # with loss_type: discopop's tau
    f_divergence_type: str = "reverse_kl"  # with loss_type: reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha_divergence_coef: float = 0.5  # with loss_type: alpha of alpha_divergence
    use_weighting: bool = False  # WPO (TRL's use_weighting): scale each pair's loss by its policy probabilities
    lr: float = 2e-5  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.03  # linear warm-up share of the steps, then cosine decay to 0
    max_steps: int = 0  # optimizer steps (0 = derive from epochs)
    epochs: float = 1.0  # passes over the data when max_steps is 0
    batch_size: int = 4  # pairs (or SFT samples) per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    optimizer: str = "adamw"  # adamw | adamw_8bit (bitsandbytes, CUDA)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on CUDA; fp32 on CPU)
    gradient_checkpointing: bool = False  # recompute activations in backward
    shared_prefix: bool = True  # one packed forward per pair when chosen/rejected share media and prompt
    precompute_reference: bool = False  # reference log-probs computed once before training and cached
    log_every: int = 1  # log metrics every N optimizer steps
    save_every: int = 0  # checkpoint every N steps for resume (0 = only on interrupt; the final adapter is always saved)
    save_total_limit: int = 0  # keep only the newest N checkpoints, deleting older ones (0 = keep all; HF's name)
    save_on_interrupt: bool = True  # on SIGINT / SIGTERM (Ctrl-C, a scheduler's preemption) finish the step, save, stop
    eval_every: int = 0  # evaluate the policy every N steps (0 = never); `mmpo train` runs eval_config
    eval_config: str = ""  # a POPE eval YAML (configs/eval/pope_*.yaml; `limit` questions per split) for eval_every
    report_to: list[str] = field(default_factory=list)  # experiment trackers: tensorboard | wandb | mlflow | trackio | swanlab
    tracker_project: str = "mmpo"  # the trackers' project / experiment name
    run_name: str = ""  # the trackers' run name ("" = output_dir's folder name)
    tensorboard: bool = False  # old key: true = report_to includes tensorboard
    progress: bool = True  # tqdm bar on a terminal (piped output, or false: a loss line every ~5% of the steps)
    parallel: str = "auto"  # with several processes: ddp (replicate) | fsdp (shard, FSDP2) | auto (fsdp if launched so)
    dist_timeout_min: float = 180.0  # minutes a process waits for the others (main-only work: the eval hook)
    max_nonfinite_steps: int = 3  # stop (exit non-zero) after this many consecutive skipped non-finite steps (0 = never)
    allow_config_change: bool = False  # resume a run folder whose config.yaml differs (else refused, listing the keys)
    pami: PamiConfig = field(default_factory=PamiConfig)  # PaMi-VDPO bag scoring
    multi_round: MultiRoundConfig = field(default_factory=MultiRoundConfig)  # stage multi_round
    distill: DistillConfig = field(default_factory=DistillConfig)  # stage distill

    def __post_init__(self):
        """Every check `mmpo train` makes of the settings themselves, all reported at once (`mmpo validate` runs
        exactly these: what one accepts, the other does too). Loss names and parameters were checked as each
        `LossTerm` was read (by the loss classes themselves); here, how the terms fit the rest."""
        problems = Problems()
        self._check_settings(problems)
        with problems.check():
            resolve_loss(self)  # TRL's loss_type section, if given, becomes `loss` (config.yaml holds only that)
            self._check_loss(problems)
        problems.raise_any()

    def _check_settings(self, problems: Problems) -> None:
        """Choices, ranges and combinations of the settings besides the loss."""
        with problems.check():
            check_choice(self, stage=("dpo", "sft", "multi_round", "distill"), parallel=("auto", "ddp", "fsdp"),
                         precision=("fp32", "bf16", "fp16"), optimizer=("adamw", "adamw_8bit"))
        if self.tensorboard and "tensorboard" not in self.report_to:
            self.report_to = [*self.report_to, "tensorboard"]
        with problems.check():
            check_report_to(self.report_to)
        with problems.check():
            check_range(self, lr="> 0", weight_decay=">= 0", warmup_ratio="[0, 1)", max_steps=">= 0", epochs="> 0",
                        batch_size=">= 1", grad_accum=">= 1", max_grad_norm=">= 0", log_every=">= 1",
                        save_every=">= 0", save_total_limit=">= 0", eval_every=">= 0", max_nonfinite_steps=">= 0",
                        dist_timeout_min="> 0")
        if self.stage in STAGE_STEPS and self.max_steps:  # it would be ignored: each part runs its own steps
            problems.errors.append(f"max_steps: stage {self.stage} sets the steps of each part itself "
                                   f"({STAGE_STEPS[self.stage]}); max_steps is for stages dpo and sft")
        if self.stage == "multi_round" and not self.lora.enabled:
            problems.errors.append("stage: multi_round merges a LoRA each round: set lora.enabled: true")
        if self.model.load_in_4bit and not self.lora.enabled:
            problems.errors.append("lora.enabled: full fine-tuning of a 4-bit model is not possible; enable LoRA "
                                   "(lora.enabled=true) or drop model.load_in_4bit")
        if self.stage == "distill" and self.distill.preference_steps > 0 and not self.distill.preference_data:
            problems.errors.append("distill.preference_data: a pair JSONL is needed when "
                                   "distill.preference_steps > 0")
        if self.stage == "distill" and self.distill.mimic_steps > 0 and not (self.distill.mimic_data or self.data.train):
            problems.errors.append("distill.mimic_data (or data.train): an SFT JSONL is needed when "
                                   "distill.mimic_steps > 0")

    def _check_loss(self, problems: Problems) -> None:
        """The resolved terms against the stage and the other settings."""
        names = {t.name for t in self.loss}
        trains_terms = {"dpo": True, "multi_round": self.multi_round.gt_weight == 0,  # else the gt term is one
                        "distill": not self.distill.dpkd and self.distill.preference_steps > 0}
        if not self.loss and trains_terms.get(self.stage, False):
            problems.errors.append(f"loss: no terms, so stage {self.stage} would train nothing; give at least one "
                                   "(e.g. loss: [{name: dpo}])")
        if self.use_weighting and {"aot", "aot_unpaired"} & names:
            problems.errors.append("use_weighting: aot and aot_unpaired sort the batch, so per-pair WPO weights "
                                   "cannot apply")
        if self.use_weighting and (self.stage == "sft" or (self.stage == "distill" and self.distill.dpkd)):
            problems.errors.append("use_weighting: WPO weights the loss terms' pairs; stage sft and dpkd have no "
                                   "such terms")
        if (self.stage == "dpo" and not self.lora.enabled and not self.precompute_reference
                and "reference" in requires_of(self.loss)):
            problems.errors.append(f"lora.enabled: {NO_ADAPTER_REFERENCE}")


TRL_SECTION = ("loss_type", "loss_weights", *TRL_KNOBS)  # TrainConfig's TRL-style loss settings


def resolve_loss(cfg: TrainConfig) -> None:
    """Set `cfg.loss`: as written, or read from the TRL-style section (`loss_type`, ...), which is then reset to its
    defaults, so the resolved config (a run's config.yaml, a schedule's derived config) holds only the terms meant;
    neither written: one dpo term.

    `loss_type` entries are TRL loss types (`TRL_LOSS_NAMES`) or LOSSES names; `loss_weights` gives one weight
    each (default 1.0, as TRL); the TRL knobs (`TRL_KNOBS`: beta, label_smoothing, ...) set their parameter in
    every term that has it. Without `loss_type` the knobs are refused (with `loss:`, each term has its params), and
    so is a `loss:` beside `loss_type`, whatever it holds.

    Raises:
        ConfigError: both sections, a knob without loss_type, an unknown name, miscounted weights, a bad
            parameter, or an f-divergence other than reverse_kl with a loss without an f-divergence form (TRL
            refuses it too).
    """
    default = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
               for f in dataclasses.fields(cfg)}
    if not cfg.loss_type:
        changed = [k for k in TRL_SECTION if getattr(cfg, k) != default[k]]
        if changed:
            raise ConfigError(f"{', '.join(changed)}: TRL's loss settings go with loss_type (TRL's spelling of "
                              "`loss`); with `loss:`, set them in each term's params")
        if cfg.loss is None:
            cfg.loss = [LossTerm()]
        return
    if cfg.loss is not None:
        raise ConfigError("loss, loss_type: set one of them (loss_type is TRL's spelling of loss)")
    names = [cfg.loss_type] if isinstance(cfg.loss_type, str) else cfg.loss_type  # TRL takes one name as well
    if cfg.loss_weights and len(cfg.loss_weights) != len(names):
        raise ConfigError(f"loss_weights: {len(cfg.loss_weights)} weights for {len(names)} loss types")
    cfg.loss = [trl_term(cfg, i, name) for i, name in enumerate(names)]
    for key in TRL_SECTION:
        setattr(cfg, key, default[key])


def trl_term(cfg: TrainConfig, i: int, trl_name: str) -> LossTerm:
    """The `loss:` term of the i-th `loss_type` entry, with the TRL knobs its loss class has."""
    name = TRL_LOSS_NAMES.get(trl_name, trl_name)
    if name not in LOSSES:
        raise ConfigError(f"loss_type[{i}]: unknown loss type {trl_name!r}; TRL's: {sorted(TRL_LOSS_NAMES)}, "
                          f"mmpo's: {sorted(LOSSES)}")
    fields = {f.name for f in dataclasses.fields(LOSSES[name])}
    knobs = {k: getattr(cfg, k) for k in TRL_KNOBS}
    if knobs["f_divergence_type"] != "reverse_kl" and "f_divergence_type" not in fields and name != "sft":
        raise ConfigError(f"f_divergence_type: {knobs['f_divergence_type']!r} has no valid form for loss type "
                          f"{trl_name!r} (the f-DPO log Z term cancels only in reward-difference losses)")
    params = {**TRL_PARAMS.get(trl_name, {}), **{param: knobs[knob] for knob, param in TRL_KNOBS.items() if param in fields}}
    weight = float(cfg.loss_weights[i]) if cfg.loss_weights else 1.0
    return from_dict(LossTerm, {"name": name, "weight": weight, "params": params}, f"loss_type[{i}]")  # as written
