"""Train an ICLM on any causal LM and a prompt/answer data set.

    python examples/train_iclm.py --base_model TinyLlama/TinyLlama-1.1B-Chat-v1.0 \
        --train_file data.jsonl --output_dir runs/iclm --num_domains 2 --bf16

The data is either a JSON-lines file with ``prompt`` and ``answer`` fields (``domain_id`` optional:
the true domain, for the oracle baseline and routing statistics), or a folder written by
``iclm data`` (``--train_splits`` picks its training splits). Runs unchanged under
``accelerate launch`` (DDP, FSDP, DeepSpeed); see the README.

Every argument and every data row is checked before the base is loaded: a bad ``--dtype``, a
missing ``--base_model`` folder, a base that is not a causal LM, an ``--output_dir`` that is a
file, or a malformed data line (reported as ``file:line`` with the expected form) stops the run
with one clear error.
"""

import os
import sys
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from configuration_iclm import AGGREGATIONS, QUANTIZATIONS
from iclm.sources import DTYPES, check_causal_lm, check_dtype, resolve_model_source
from iclm.tasks import AnswerOnlyCollator
from iclm.tasks.files import PROMPT_ANSWER_FORM, read_prompt_answer_jsonl
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmTrainer, IclmTrainingArguments


@dataclass
class ModelArguments:
    base_model: str = field(metadata={"help": "Causal LM to build the ICLM on: a Hub id or a local path."})
    num_domains: int = field(default=2, metadata={"help": "Number N of domain-specific modules (router centroids)."})
    use_invariant_module: bool = field(default=True, metadata={"help": "False: the 'ICLM without invariant' ablation."})
    aggregation: str = field(default="hidden_states", metadata={"help": "hidden_states, logits or probas."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of every module."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA alpha of every module."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout of every module."})
    router_quantization: str = field(default="hard", metadata={"help": "hard, soft or gumbel."})
    dtype: str = field(default="auto", metadata={"help": f"Dtype of the base weights: {', '.join(DTYPES)}."})

    def __post_init__(self):
        self.dtype = check_dtype(self.dtype)
        for name, value, allowed in (("aggregation", self.aggregation, AGGREGATIONS),
                                     ("router_quantization", self.router_quantization, QUANTIZATIONS)):
            if value not in allowed:
                raise ValueError(f"--{name} {value!r} is not one of {', '.join(allowed)}; pick one of them.")
        if self.num_domains < 1 or self.lora_r < 1:
            raise ValueError(f"--num_domains and --lora_r must be >= 1, got {self.num_domains} and {self.lora_r}.")


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "JSON-lines file (prompt, answer[, domain_id]) or an `iclm data` folder."})
    train_splits: str = field(
        default="train", metadata={"help": "With an `iclm data` folder: comma-separated split names, or a suffix "
                                           "(default 'train': every split whose name ends with '_train')."})
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per row; the prompt is cut from the left."})

    def __post_init__(self):
        if self.max_length < 1:
            raise ValueError(f"--max_length must be a positive number of tokens, got {self.max_length}.")


def _from_folder(path: str, train_splits: str):
    """The training splits of a folder written by ``iclm data`` (or one saved ``Dataset``)."""
    if not os.path.isfile(os.path.join(path, "dataset_dict.json")) and not os.path.isfile(
            os.path.join(path, "state.json")):
        raise ValueError(f"--train_file {path!r} is a folder but not one written by `iclm data --out` (it has no "
                         f"dataset_dict.json); give that folder, or a JSON-lines file: {PROMPT_ANSWER_FORM}.")
    splits = load_from_disk(path)
    if not isinstance(splits, DatasetDict):
        return splits
    wanted = [s.strip() for s in train_splits.split(",") if s.strip()]
    names = [n for n in splits if n in wanted or any(n.endswith("_" + w) for w in wanted)]
    if not names:
        raise ValueError(f"No split of {path} matches --train_splits {train_splits!r}; it has {sorted(splits)}.")
    return concatenate_datasets([splits[n] for n in names])


def _from_jsonl(path: str, num_domains=None) -> Dataset:
    """A JSON-lines file, every line checked first (errors name ``file:line``, 1-based, and the expected form)."""
    rows = read_prompt_answer_jsonl(path, num_domains=num_domains)
    names = list(dict.fromkeys(name for row in rows for name in row))  # every field of any row, in order
    columns = {name: [row.get(name) for row in rows] for name in names}
    if all(value is None for value in columns.get("domain_id", [0])):
        del columns["domain_id"]  # null everywhere: no domain ids
    try:
        return Dataset.from_dict(columns)
    except (TypeError, ValueError, ArithmeticError) as error:  # pyarrow's ArrowInvalid/ArrowTypeError among them
        raise ValueError(f"{path}: the rows' fields could not be combined into one table ({error}); give each field "
                         "the same structure in every row.") from None


def load_training_data(data: DataArguments, num_domains=None, oracle: bool = False):
    """The training rows, checked: string ``prompt``/``answer`` and, if given, int ``domain_id`` in 0..N-1
    (``N = num_domains`` under oracle routing, which routes by it; any index >= 0 otherwise)."""
    if not os.path.exists(data.train_file):
        raise FileNotFoundError(f"--train_file {data.train_file!r} does not exist; give a JSON-lines file "
                                f"({PROMPT_ANSWER_FORM}) or a folder written by `iclm data --out`.")
    if os.path.isdir(data.train_file):
        dataset = _from_folder(data.train_file, data.train_splits)
    else:
        dataset = _from_jsonl(data.train_file, num_domains if oracle else None)
    missing = {"prompt", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{data.train_file} has no {sorted(missing)} column(s): each row needs a prompt and an answer.")
    if len(dataset) == 0:
        raise ValueError(f"{data.train_file} holds no rows: give at least one prompt/answer row.")
    for name in ("prompt", "answer"):
        kind = getattr(dataset.features[name], "dtype", None)
        if kind not in ("string", "large_string"):
            raise ValueError(f"{data.train_file}: column {name!r} holds {kind or dataset.features[name]}, not strings; "
                             f"expected {PROMPT_ANSWER_FORM}.")
    if "domain_id" in dataset.column_names:
        kind = getattr(dataset.features["domain_id"], "dtype", "")
        if not str(kind).startswith(("int", "uint")):
            raise ValueError(f"{data.train_file}: column 'domain_id' holds {kind}, not ints; domain_id must be an int "
                             "index 0..N-1 of the row's domain, or absent.")
        domains = dataset["domain_id"]
        if min(domains) < 0 or (oracle and num_domains is not None and max(domains) >= num_domains):
            bad = min(domains) if min(domains) < 0 else max(domains)
            raise ValueError(f"{data.train_file}: row {domains.index(bad) + 1} has domain_id {bad}; domain_id must be "
                             f"an int index 0..N-1 (oracle routing: N = --num_domains = {num_domains}); renumber the "
                             "domains or raise --num_domains.")
    return dataset


def check_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--output_dir {path!r} is an existing file, not a folder; choose a folder name.")


def main(argv=None) -> IclmTrainer:
    parser = HfArgumentParser((ModelArguments, DataArguments, IclmTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # Everything the user gave is checked before the base is loaded.
    check_output_dir(training_args.output_dir)
    source = resolve_model_source(model_args.base_model, option="--base_model")
    check_causal_lm(source, option="--base_model")
    dataset = load_training_data(data_args, model_args.num_domains, training_args.use_oracle_routing)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(source, dtype=model_args.dtype)
    model = IclmForCausalLM.from_base(
        base, num_domains=model_args.num_domains, use_invariant_module=model_args.use_invariant_module,
        aggregation=model_args.aggregation, lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout, router_quantization=model_args.router_quantization,
    )
    domain_names = None
    if "distribution" in dataset.column_names and "domain_id" in dataset.column_names:
        pairs = dict(zip(dataset["domain_id"], dataset["distribution"]))
        domain_names = [pairs.get(i, f"distribution {i}") for i in range(max(pairs) + 1)]
    trainer = IclmTrainer(
        model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
        data_collator=AnswerOnlyCollator(tokenizer, max_length=data_args.max_length, padding_side="right"),
        domain_names=domain_names, training_data=data_args.train_file,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # with --push_to_hub this also uploads the model and its card, once
    return trainer


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError) as error:
        print(f"train_iclm.py: error: {error}", file=sys.stderr)  # bad arguments or data: one line, no traceback
        sys.exit(1)
