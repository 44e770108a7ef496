"""Tiny Llama- and GPT-2-style bases built from small configs: nothing is loaded from the Hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 97


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


BASES = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@torch.no_grad()
def make_trained(model, seed: int = 1):
    """Give every module distinct non-zero LoRA weights (as after training), so modules really differ."""
    generator = torch.Generator().manual_seed(seed)
    for routed in model.lora.values():
        for pair in routed.adapters.values():
            pair.lora_B.copy_(torch.randn(pair.lora_B.shape, generator=generator) * 0.3)
    if model.aggregation is not None and model.config.aggregation == "hidden_states":
        model.aggregation.weight.add_(torch.randn(model.aggregation.weight.shape, generator=generator) * 0.05)
    return model


def batch(batch_size: int = 4, length: int = 12, answer: int = 2, seed: int = 0):
    """Random prompt + answer rows with answer-only labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    labels = input_ids.clone()
    labels[:, : length - answer] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


@pytest.fixture(params=sorted(BASES))
def base_factory(request):
    return BASES[request.param]


def word_tokenizer(words):
    """A word-level fast tokenizer over ``words`` (plus specials), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def two_domain_rows(count: int = 32, seed: int = 0):
    """Prompt/answer rows from two 'domains' with disjoint vocabularies (domain_id 0 and 1), answers of 1-2 words."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(count):
        domain = i % 2
        words = [f"{'ab'[domain]}{rng.randrange(12)}" for _ in range(rng.randint(5, 9))]
        answer = " ".join(f"{'xy'[domain]}{rng.randrange(3)}" for _ in range(1 + i % 3 // 2))
        rows.append({"prompt": " ".join(words) + " ", "answer": answer, "domain_id": domain})
    return rows


def vocabulary():
    return [f"{p}{i}" for p in "ab" for i in range(12)] + [f"{p}{i}" for p in "xy" for i in range(3)]


def left_padded_prompts():
    """Three 9-token prompts, the first left-padded by 2: the generation and static-cache tests' inputs."""
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, VOCAB, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :2], attention_mask[0, :2] = 0, 0  # left padding
    return input_ids, attention_mask


def two_pairs_of_close_clusters(generator, rows=64, length=6, hidden=16):
    """Router states of four prompt types as two tasks × two renderings: the renderings of a task close, the tasks far
    apart (the experiment's shape); returns states [rows, length, hidden] and each row's type."""
    u, v, w = torch.randn(3, hidden, generator=generator)
    centres = torch.stack([8 * u + 2 * v, 8 * u - 2 * v, -8 * u + 2 * w, -8 * u - 2 * w])
    truth = torch.arange(rows) % 4
    return centres[truth][:, None, :] + torch.randn(rows, length, hidden, generator=generator), truth
