"""Train an ICLM on any causal LM and a prompt/answer data set.

    python examples/train_iclm.py --base_model TinyLlama/TinyLlama-1.1B-Chat-v1.0 \
        --train_file data.jsonl --output_dir runs/iclm --num_domains 2 --bf16

The data is either a JSON-lines file with ``prompt`` and ``answer`` fields (``domain_id`` optional:
the true domain, for the oracle baseline and routing statistics), or a folder written by
``iclm data`` (``--train_splits`` picks its training splits). Runs unchanged under
``accelerate launch`` (DDP, FSDP, DeepSpeed); see the README.
"""

import os
import sys
from dataclasses import dataclass, field

from datasets import concatenate_datasets, load_dataset, load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from iclm.tasks import AnswerOnlyCollator
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
    dtype: str = field(default="auto", metadata={"help": "Dtype of the base weights: auto, bfloat16, float16, float32."})


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "JSON-lines file (prompt, answer[, domain_id]) or an `iclm data` folder."})
    train_splits: str = field(
        default="train", metadata={"help": "With an `iclm data` folder: comma-separated split names, or a suffix "
                                           "(default 'train': every split whose name ends with '_train')."})
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per row; the prompt is cut from the left."})


def load_training_data(data: DataArguments):
    if not os.path.exists(data.train_file):
        raise FileNotFoundError(f"--train_file {data.train_file!r} does not exist.")
    if os.path.isdir(data.train_file):
        splits = load_from_disk(data.train_file)
        wanted = [s.strip() for s in data.train_splits.split(",") if s.strip()]
        names = [n for n in splits if n in wanted or any(n.endswith("_" + w) for w in wanted)]
        if not names:
            raise ValueError(f"No split of {data.train_file} matches --train_splits {data.train_splits!r}; "
                             f"it has {sorted(splits)}.")
        dataset = concatenate_datasets([splits[n] for n in names])
    else:
        dataset = load_dataset("json", data_files=data.train_file, split="train")
    missing = {"prompt", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{data.train_file} has no {sorted(missing)} column(s): each row needs a prompt and an answer.")
    return dataset


def main(argv=None) -> IclmTrainer:
    parser = HfArgumentParser((ModelArguments, DataArguments, IclmTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    dataset = load_training_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_args.base_model, dtype=model_args.dtype)
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
    main(sys.argv[1:])
