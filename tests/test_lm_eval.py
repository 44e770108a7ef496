"""lm-evaluation-harness, run for real (offline, local jsonl tasks) on a tiny saved ICLM with the ``iclm`` class.

One multiple-choice and one generation task; the ``iclm`` class at batch sizes 1 (folder loaded with
``trust_remote_code``) and 8 (in-memory model); the model's own scoring as the reference; lm-eval's stock
``hf`` class to show the problem it fixes; ``iclm lm-eval`` end to end.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from iclm.cli import main  # noqa: E402
from iclm.lm_eval import IclmLM  # noqa: E402
from modeling_iclm import IclmForCausalLM  # noqa: E402
from tests.conftest import make_trained, tiny_llama, word_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
A_WORDS = [f"a{i}" for i in range(12)]
B_WORDS = [f"b{i}" for i in range(12)]
ANSWERS = [f"{p}{i}" for p in "xy" for i in range(3)]
WORDS = A_WORDS + B_WORDS + ANSWERS + ["?"]
MAX_GEN_TOKS = 4
N_DOCS = 16


def _documents(seed: int = 0):
    """Contexts from domain a or b ending in '?' (so no context is a prefix of another), of 1-6 words.

    Choices: two one-token answers (the logits cache groups them), a two-token one and a long one in the
    other domain's words, which moves the route when a router reads it.
    """
    rng = random.Random(seed)
    mc, gen, seen = [], [], set()
    for i in range(N_DOCS):
        own, other = (A_WORDS, B_WORDS) if i % 2 == 0 else (B_WORDS, A_WORDS)
        context = None
        while context in seen or context is None:  # distinct contexts: one cached one-token group per doc
            context = " ".join(rng.choice(own) for _ in range(1 + i % 6)) + " ?"
        seen.add(context)
        choices = ["x0", "y1", "x1 x2", " ".join(rng.choice(other) for _ in range(6))]
        mc.append({"context": context, "choices": choices, "label": i % 4})
        gen.append({"context": context, "answer": "x0"})
    return mc, gen


TASKS = {
    "iclm_mc": "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
               "doc_to_target: label\nmetric_list:\n  - metric: acc\n",
    "iclm_gen": "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: answer\n"
                f"generation_kwargs:\n  until: ['</s>']\n  max_gen_toks: {MAX_GEN_TOKS}\n  do_sample: false\n"
                "metric_list:\n  - metric: exact_match\n",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny two-domain ICLM (distinct module weights, base stored in full) with its word tokenizer.

    The codebook holds the router embeddings of an all-``a`` and an all-``b`` text (as a trained router
    would separate the domains), so routes follow the words read. The tokenizer pads with EOS, as lm-eval
    sets up tokenizers without a pad token (Llama's, ...): then ``generate`` cannot infer a missing mask
    from the padding.
    """
    path = tmp_path_factory.mktemp("iclm")
    model = make_trained(IclmForCausalLM.from_base(tiny_llama(), num_domains=2)).eval()
    tokenizer = word_tokenizer(WORDS)
    with torch.no_grad():
        texts = [tokenizer(" ".join(words)).input_ids for words in (A_WORDS, B_WORDS)]
        model.router.codebook.data = torch.cat([model.route(torch.tensor([ids])).embeddings for ids in texts])
    model.save_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks")
    for name, rows in zip(TASKS, _documents(), strict=True):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (path / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path / name}.jsonl\n"
            f"  cache_dir: {path / 'hf_datasets'}\ntest_split: test\n{TASKS[name]}"
        )
    return path


@pytest.fixture(scope="module")
def reference(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


class RouteRecorder:
    """Records (input_ids, attention_mask, labels, routes) of scoring forwards (generation's carry a cache)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]  # HFLM calls model(inps)
            self.calls.append((input_ids, kwargs.get("attention_mask"), kwargs.get("labels"), output.routes))

    def rows(self):
        for input_ids, mask, labels, routes in self.calls:
            for i in range(input_ids.shape[0]):
                yield (input_ids[i], None if mask is None else mask[i], None if labels is None else labels[i],
                       int(routes[i]))


def _evaluate(lm, task_dir, tasks):
    return simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(task_dir),
                                                                           include_defaults=False),
                           log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def runs(folder, task_dir, reference):
    """The ``iclm`` class on both tasks: batch size 1 from the folder, 8 on the in-memory model; routes seen."""
    model, tokenizer = reference
    folder_lm = IclmLM(pretrained=str(folder), trust_remote_code=True, batch_size=1)
    memory_lm = IclmLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    results = {}
    for size, lm in ((1, folder_lm), (8, memory_lm)):
        recorder = RouteRecorder(lm.model)
        try:
            results[size] = _evaluate(lm, task_dir, ["iclm_mc", "iclm_gen"])
        finally:
            recorder.handle.remove()
        results[size]["recorded"] = list(recorder.rows())
    return results


def _loglikelihoods(results, task="iclm_mc"):
    """[(context, continuation, log-likelihood)] in doc and choice order."""
    rows = []
    for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"]):
        for (context, continuation), resps in zip(sample["arguments"], sample["resps"], strict=True):
            rows.append((context, continuation, resps[0][0]))
    return rows


def _own_score(model, tokenizer, context, continuation):
    """The model's scoring of one unpadded row: mask, labels on the continuation only."""
    return _own_score_ids(model, tokenizer(context).input_ids, tokenizer(continuation).input_ids)


@torch.no_grad()
def _own_score_ids(model, ctx, cont):
    input_ids = torch.tensor([ctx + cont])
    labels = torch.tensor([[-100] * len(ctx) + cont])
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).logits
    log_probs = torch.log_softmax(logits[0, len(ctx) - 1: -1].float(), dim=-1)
    return float(log_probs.gather(1, torch.tensor(cont)[:, None]).sum())


@torch.no_grad()
def _own_score_routed_on_context(model, ctx, cont):
    """The model's scoring of one row under the route of ``ctx`` alone, given as ``domain_ids``."""
    routes = model.route(torch.tensor([ctx])).routes
    logits = model(input_ids=torch.tensor([ctx + cont]), domain_ids=routes).logits
    log_probs = torch.log_softmax(logits[0, len(ctx) - 1: -1].float(), dim=-1)
    return float(log_probs.gather(1, torch.tensor(cont)[:, None]).sum())


@torch.no_grad()
def _context_routes(model, tokenizer):
    """Token ids of each context -> the route the model picks reading that context alone."""
    return {
        tuple(ids): int(model.route(torch.tensor([ids])).routes[0])
        for ids in (tokenizer(doc["context"]).input_ids for doc in _documents()[0])
    }


def _route_mismatches(recorded, contexts):
    """Recorded rows whose route differs from their context's own route (context found by prefix)."""
    mismatches, matched = 0, 0
    for input_ids, _, _, route in recorded:
        ids = tuple(input_ids.tolist())
        context = next(c for c in contexts if ids[: len(c)] == c)
        matched += 1
        mismatches += route != contexts[context]
    return mismatches, matched


def test_loglikelihoods_match_across_batch_sizes_and_the_models_own_scoring(runs, reference):
    model, tokenizer = reference
    one, eight = _loglikelihoods(runs[1]), _loglikelihoods(runs[8])
    assert len(one) == 4 * N_DOCS and [r[:2] for r in one] == [r[:2] for r in eight]
    assert torch.allclose(torch.tensor([r[2] for r in one]), torch.tensor([r[2] for r in eight]), atol=1e-5, rtol=0)
    own = torch.tensor([_own_score(model, tokenizer, context, continuation) for context, continuation, _ in one])
    assert torch.allclose(torch.tensor([r[2] for r in eight]), own, atol=1e-5, rtol=0)
    assert runs[1]["results"]["iclm_mc"]["acc,none"] == runs[8]["results"]["iclm_mc"]["acc,none"]


def test_scoring_routes_on_the_context_never_the_candidate(runs, reference):
    model, tokenizer = reference
    contexts = _context_routes(model, tokenizer)
    assert len(set(contexts.values())) == 2, "the tiny ICLM must route contexts to both domains"
    for size in (1, 8):
        recorded = runs[size]["recorded"]
        assert all(mask is not None and labels is not None for _, mask, labels, _ in recorded)
        assert any(not bool(mask.all()) for _, mask, _, _ in recorded) == (size == 8)  # padding is masked
        mismatches, matched = _route_mismatches(recorded, contexts)
        assert mismatches == 0 and matched == 3 * N_DOCS  # per doc: the cached one-token pair + 2 longer choices


def test_stock_hf_class_routes_on_the_candidate_and_padding(folder, task_dir, reference):
    """The problem is real: lm-eval's ``hf`` class gives the router the candidate (and padding) to read."""
    model, tokenizer = reference
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu")
    recorder = RouteRecorder(model)
    try:
        results = _evaluate(lm, task_dir, ["iclm_mc"])
    finally:
        recorder.handle.remove()
    mismatches, matched = _route_mismatches(recorder.rows(), _context_routes(model, tokenizer))
    assert matched == 3 * N_DOCS and mismatches > 0
    own = [_own_score(model, tokenizer, c, k) for c, k, _ in _loglikelihoods(results)]
    assert max(abs(a - b) for a, b in zip(own, [r[2] for r in _loglikelihoods(results)], strict=True)) > 1e-3


def test_generation_is_batch_independent_and_equals_model_generate(runs, reference):
    model, tokenizer = reference
    one = [s["resps"][0][0] for s in sorted(runs[1]["samples"]["iclm_gen"], key=lambda s: s["doc_id"])]
    eight = [s["resps"][0][0] for s in sorted(runs[8]["samples"]["iclm_gen"], key=lambda s: s["doc_id"])]
    expected = []
    for doc in _documents()[1]:
        input_ids = torch.tensor([tokenizer(doc["context"]).input_ids])
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=MAX_GEN_TOKS,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[0, input_ids.shape[1]:].tolist()
        eos = tokenizer.eos_token_id
        expected.append(tokenizer.decode(new[: new.index(eos)] if eos in new else new, skip_special_tokens=True))
    assert one == eight == expected
    assert len(set(expected)) > 1, "generations should differ between contexts"


def _text_routed_unlike(model, tokenizer, token):
    """Token ids of an all-a or all-b text that the model's prefix rule (row = [token] + text, labelled from its
    start: the router reads its first tokens) routes unlike ``token`` alone: reading the text would change the
    route. (The model refuses a one-token prompt with answer-only labels; lm-eval's class routes such rows itself.)"""
    alone = int(model.route(torch.tensor([[token]])).routes[0])
    for words in (A_WORDS[:7], B_WORDS[:7]):
        ids = tokenizer(" ".join(words)).input_ids
        row = torch.tensor([[token] + ids])
        if int(model.route(row, labels=row).routes[0]) != alone:
            return ids
    raise AssertionError("no text routes unlike the token alone: the test would not tell the two apart")


def test_rolling_loglikelihood_routes_on_the_prefix_token(reference):
    """``loglikelihood_rolling`` scores every token; the router reads the window's context (here BOS) only,
    not the first ``router_prefix_length`` tokens the model's rule reads for a row labelled from its start."""
    model, tokenizer = reference
    lm = IclmLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    bos = tokenizer.bos_token_id
    rows = [_text_routed_unlike(model, tokenizer, bos), tokenizer("b3 b4 b5").input_ids]
    texts = [tokenizer.decode(ids) for ids in rows]
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), 0) for t in texts],
                                   disable_tqdm=True)
    expected = [_own_score_routed_on_context(model, [bos], ids) for ids in rows]
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=0)


def test_one_batch_scores_each_row_as_alone(reference):
    """Rows sharing one batch: ``A`` + ``x y`` and ``A x`` + ``y`` share HFLM's logits-cache key but not their
    context (nor route); a one-token continuation; an empty context (lm-eval's ``[prefix token]``), routed on
    that token rather than on the continuation."""
    model, tokenizer = reference
    lm = IclmLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    context, (x, y) = tokenizer("a1 a2 ?").input_ids, tokenizer("b1 b2").input_ids
    bos = [tokenizer.bos_token_id]
    text = _text_routed_unlike(model, tokenizer, bos[0])
    requests = [(None, context, [x, y]), (None, context + [x], [y]), (None, context, [x]), (None, bos, text)]
    got = [ll for ll, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
    expected = [_own_score_ids(model, c, k) for _, c, k in requests[:3]]
    expected.append(_own_score_routed_on_context(model, bos, text))
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=0)


def test_cli_forwards_to_lm_eval_with_iclm_registered(folder, task_dir, tmp_path, runs):
    """``iclm lm-eval`` in a fresh process (only the subcommand can register ``iclm`` there), JSON written."""
    out = tmp_path / "out"
    argv = ["lm-eval", "--model", "iclm", "--model_args", f"pretrained={folder}", "--tasks", "iclm_mc",
            "--include_path", str(task_dir), "--batch_size", "8", "--output_path", str(out)]
    script = "import sys; from iclm.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = out.rglob("results_*.json")
    saved = json.loads(written.read_text())
    assert saved["config"]["model"] == "iclm"
    assert saved["results"]["iclm_mc"]["acc,none"] == runs[8]["results"]["iclm_mc"]["acc,none"]


def test_cli_leaves_help_to_lm_eval(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lm-eval", "-h"])
    assert exit_info.value.code == 0
    assert "Language Model Evaluation Harness" in capsys.readouterr().out
