"""Bad input on the data and command-line side: every case fails early, with an error that names the problem,
the file and 1-based line where there is one, the expected form and the fix — never deep inside a library.

Covers the collator (cut prompts, domain ids), prompt/answer data files, ``iclm data`` and ``iclm experiment``
arguments (checked before anything is built: the build itself is replaced by a trap here, and each case must
fail in well under a second), and ``examples/train_iclm.py`` (checked before the base is loaded: loading is a
trap too), with a tiny local Llama saved by the test.
"""

import gzip
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import types
import warnings

import pytest
from conftest import tiny_llama, word_tokenizer

from iclm.cli import main as cli
from iclm.sources import check_causal_lm, check_dtype, resolve_model_source
from iclm.tasks import AnswerOnlyCollator
from iclm.tasks.files import read_json, read_jsonl, read_prompt_answer_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["[5,", "7]", "->", "12", "a", "b", "c", "d", "e", "f", "g", "h"]
QUICK = 1.0  # seconds: argument errors come before any work


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny causal Llama (with tokenizer) and config-only folders of models that are not causal LMs."""
    from transformers import BertConfig, DistilBertConfig, T5Config

    root = tmp_path_factory.mktemp("models")
    llama = tiny_llama()
    llama.config.max_position_embeddings = 2048  # holds the smoke preset's prompts (the window is checked up front)
    llama.save_pretrained(root / "llama")
    word_tokenizer(WORDS).save_pretrained(root / "llama")
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(root / "bert")
    DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32).save_pretrained(root / "distilbert")
    T5Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8).save_pretrained(root / "t5")
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "notes.txt").write_text("no config here")
    (root / "weights.bin").write_bytes(b"\0" * 8)
    return root


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _lines(*rows):
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


GOOD = {"prompt": "[5, 7] -> ", "answer": "12"}


# ------------------------------------------------------------------------------------------------ collator
def test_cut_prompt_warns_once_with_counts_and_the_setting_to_raise(tokenizer):
    collator = AnswerOnlyCollator(tokenizer, max_length=4)
    with pytest.warns(UserWarning, match=r"cut the prompt of 1 row\(s\) so far from the left to fit max_length=4 "
                                         r"\(1 prompt tokens cut in all.*3 -> 2 prompt tokens\).*Raise max_length "
                                         r"\(to at least 5"):
        batch = collator([GOOD])
    assert tokenizer.decode(batch["input_ids"][0][:2]) == "7] ->" and collator.num_truncated == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per collator: the next cut rows are counted, not warned again
        collator([GOOD] * 3)
    assert collator.num_truncated == 4 and collator.num_truncated_tokens == 4


def test_cut_prompts_running_count_is_logged_at_10_rows(tokenizer, caplog):
    collator = AnswerOnlyCollator(tokenizer, max_length=4)
    with pytest.warns(UserWarning), caplog.at_level(logging.WARNING, logger="iclm.tasks.collator"):
        collator([GOOD] * 12)
    assert [r.message for r in caplog.records if "cut the prompt of 10 row(s)" in r.message], caplog.text


def test_whole_prompts_do_not_warn(tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AnswerOnlyCollator(tokenizer, max_length=64)([GOOD])


@pytest.mark.parametrize("on_too_long", ["skip", "error"])
def test_prompt_cut_below_min_prompt_tokens_is_refused(tokenizer, on_too_long):
    collator = AnswerOnlyCollator(tokenizer, max_length=4, min_prompt_tokens=3, on_too_long=on_too_long)
    message = r"Row p needs 5 tokens; its answer cannot fit in max_length=4 with at least 3 prompt tokens.*" \
              r"Raise max_length \(to at least 5"
    row = {**GOOD, "problem_id": "p"}
    if on_too_long == "error":
        with pytest.raises(ValueError, match=message):
            collator([row])
    else:
        with pytest.warns(UserWarning, match=message + r".*lower min_prompt_tokens"), \
                pytest.raises(ValueError, match="All 1 rows of the batch were too long"):
            collator([row])
        assert collator.num_skipped == 1


@pytest.mark.parametrize("value", ["acre", 1.5, True, -1, [0]])
def test_collator_refuses_a_domain_id_that_is_not_an_index(tokenizer, value):
    rows = [{**GOOD, "domain_id": 0}, {**GOOD, "domain_id": value, "problem_id": "q7"}]
    with pytest.raises(ValueError, match=r"Row q7 \(row 2 of the batch\) has domain_id .* domain_id must be an "
                                         r"int index 0\.\.N-1 .*or absent from every row"):
        AnswerOnlyCollator(tokenizer)(rows)


@pytest.mark.parametrize("row, expected", [
    ({"answer": "12"}, r"string 'prompt'; got nothing \(the field is missing\) in row \? \(row 1 of the batch\)"),
    ({"prompt": "a ", "answer": 12}, r"string 'answer'; got 12 \(int\).*Give each row string 'prompt' and 'answer'"),
])
def test_collator_names_a_missing_or_mistyped_field(tokenizer, row, expected):
    with pytest.raises(ValueError, match=expected):
        AnswerOnlyCollator(tokenizer)([row])


# ------------------------------------------------------------------------------------------------ data files
FORM = r"expected one JSON object per line with string \"prompt\" and \"answer\""
BAD_FILES = {
    "malformed_line": (_lines(GOOD, '{"prompt": "b", '), r"data\.jsonl:2: malformed JSON line .*" + FORM),
    "missing_prompt": (_lines(GOOD, {"answer": "1"}), r"data\.jsonl:2: missing the 'prompt' field \(the row has "
                                                       r"\['answer'\]\); " + FORM),
    "missing_answer": (_lines({"prompt": "a "}), r"data\.jsonl:1: missing the 'answer' field"),
    "answer_is_a_number": (_lines({"prompt": "a ", "answer": 12}),
                           r"data\.jsonl:1: 'answer' is a JSON number \(12\), expected a string \(quote it: \"12\"\)"),
    "prompt_is_null": (_lines(GOOD, GOOD, {"prompt": None, "answer": "1"}),
                       r"data\.jsonl:3: 'prompt' is a JSON null .*expected a string"),
    "line_is_an_array": (_lines(GOOD, "[1, 2]"), r"data\.jsonl:2: expected a JSON object \{\.\.\.\}, got a JSON array"),
    "domain_id_is_a_name": (_lines({**GOOD, "domain_id": "acre"}),
                            r"data\.jsonl:1: domain_id is 'acre' \(a JSON string\); domain_id must be an int index "
                            r"0\.\.N-1 .*or absent from every row"),
    "domain_id_in_some_rows": (_lines({**GOOD, "domain_id": 0}, GOOD),
                               r"data\.jsonl:2: this row has no domain_id, but .*data\.jsonl:1 has one; give every "
                               r"row a domain_id or none"),
    "field_changes_type": (_lines({**GOOD, "meta": "x"}, {**GOOD, "meta": 3}),
                           r"data\.jsonl:2: field 'meta' is a JSON number here but a JSON string on .*data\.jsonl:1"),
    "empty_file": ("", r"data\.jsonl: file is empty \(no JSON lines\); " + FORM),
    "blank_lines_only": ("\n  \n\n", r"data\.jsonl: file is empty"),
    "not_utf8": (_lines(GOOD).encode() + b'{"prompt": "caf\xe9 ", "answer": "1"}\n',
                 r"data\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\); save the file as UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_prompt_answer_file_names_file_line_and_form(tmp_path, case):
    content, expected = BAD_FILES[case]
    path = _write(tmp_path / "data.jsonl", content)
    with pytest.raises(ValueError, match=expected):
        read_prompt_answer_jsonl(path)


def test_domain_id_beyond_the_modules_names_the_line(tmp_path):
    path = _write(tmp_path / "data.jsonl", _lines({**GOOD, "domain_id": 1}, {**GOOD, "domain_id": 5}))
    with pytest.raises(ValueError, match=r"data\.jsonl:2: domain_id is 5, but there are 2 domains \(indices 0\.\.1\); "
                                         r"renumber the domains or raise --num_domains"):
        read_prompt_answer_jsonl(path, num_domains=2)


@pytest.mark.parametrize("reader", [read_json, read_jsonl, read_prompt_answer_jsonl])
def test_a_folder_given_as_a_data_file_is_named(tmp_path, reader):
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a file: give the path of the data file itself"):
        list(reader(tmp_path)) if reader is not read_json else reader(tmp_path)


@pytest.mark.parametrize("reader", [read_json, read_jsonl])
def test_benchmark_readers_name_the_line_of_non_utf8_text(tmp_path, reader):
    path = _write(tmp_path / "raw.json", b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(ValueError, match=r"raw\.json:2: not UTF-8 text \(byte 0xff at column 8\)"):
        list(reader(path)) if reader is read_jsonl else reader(path)


def test_a_gz_file_that_is_not_gzip_is_named(tmp_path):
    path = _write(tmp_path / "data.jsonl.gz", _lines(GOOD))
    with pytest.raises(ValueError, match=r"data\.jsonl\.gz: not a readable gzip file .*drop the \.gz suffix"):
        read_prompt_answer_jsonl(path)


def test_good_files_lose_nothing(tmp_path):
    """A BOM, CRLF line ends, blank lines, gzip, extra fields and a JSON array file are all read, field by field."""
    rows = [{**GOOD, "domain_id": 1, "meta": {"k": 1}}, {"prompt": "é ", "answer": "x", "domain_id": 0}]
    text = "\ufeff" + json.dumps(rows[0]) + "\r\n\r\n" + json.dumps(rows[1], ensure_ascii=False) + "\r\n"
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(text)
    assert read_prompt_answer_jsonl(tmp_path / "a.jsonl.gz") == rows
    assert read_prompt_answer_jsonl(_write(tmp_path / "b.json", json.dumps(rows))) == rows


# ------------------------------------------------------------------------------------------------ sources
@pytest.mark.parametrize("value, expected", [("float64x", None), ("int8", None), ("torch.bfloat16", "bfloat16"),
                                             ("Float32", "float32")])
def test_dtype_is_checked_against_the_supported_names(value, expected):
    if expected is None:
        with pytest.raises(ValueError, match=rf"--dtype '{value}' is not a supported dtype: use one of auto, "
                                             r"float32, bfloat16, float16"):
            check_dtype(value)
    else:
        assert check_dtype(value) == expected


@pytest.mark.parametrize("name, error, expected", [
    ("./no/such/dir", FileNotFoundError, r"the folder '\./no/such/dir' does not exist \(looked for .*no/such/dir\)"),
    ("no/such/dir", FileNotFoundError, r"the folder 'no/such/dir' does not exist"),
    ("someone/uncached-model", FileNotFoundError, r"'someone/uncached-model' is not a local folder .*could not be "
                                                  r"resolved offline.*Download it once"),
    ("bad name!", ValueError, r"'bad name!' is neither an existing folder nor a valid Hub id"),
    ("WEIGHTS", ValueError, r"weights\.bin' is a file; a model is a local folder written by save_pretrained"),
    ("NOT_A_MODEL", FileNotFoundError, r"not_a_model' is a folder without config\.json"),
])
def test_model_sources_are_resolved_with_a_clear_error(models, monkeypatch, name, error, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = {"WEIGHTS": str(models / "weights.bin"), "NOT_A_MODEL": str(models / "not_a_model")}.get(name, name)
    with pytest.raises(error, match=expected):
        resolve_model_source(name, option="--base-model")


def test_a_saved_model_folder_resolves_to_itself(models):
    assert resolve_model_source(str(models / "llama")) == str(models / "llama")
    assert check_causal_lm(str(models / "llama"))["model_type"] == "llama"


# ------------------------------------------------------------------------------------------------ iclm data
@pytest.fixture
def no_build(monkeypatch):
    """Building the benchmark is a failure: every bad argument must be refused before it."""
    import iclm.tasks.benchmark as benchmark

    def trap(*args, **kwargs):
        raise AssertionError("the benchmark was built before the arguments were checked")

    monkeypatch.setattr(benchmark, "load_benchmark", trap)


def _data_case(tmp_path, case):
    out = tmp_path / "bench"
    if case == "out_is_a_file":
        _write(out, "keep me")
        return ["--out", str(out)], r"--out .*bench is an existing file, not a folder; choose a new folder name"
    if case == "out_holds_other_files":
        out.mkdir()
        _write(out / "notes.txt", "keep me")
        return ["--out", str(out)], (r"--out .*bench is a folder that already holds other files \(notes\.txt\) \(only "
                                     r"an earlier output of this command is accepted.*choose a new or empty folder")
    if case == "out_under_a_file":
        _write(tmp_path / "file", "x")
        return ["--out", str(tmp_path / "file" / "bench")], r"file is a file, so no folder can be created under it"
    if case == "tokenizer_is_a_file":
        return (["--out", str(out), "--tokenizer", str(_write(tmp_path / "tok.json", "{}"))],
                r"Tokenizer folder .*tok\.json is a file, not a folder; --tokenizer takes a local folder")
    option, value, expected = {
        "validation_fraction": ("--validation-fraction", "1.5", r"--validation-fraction must be in \[0, 1\)"),
        "max_length": ("--max-length", "0", r"--max-length must be a positive number of tokens, got 0"),
        "limit_per_split": ("--limit-per-split", "-1", r"--limit-per-split must not be negative, got -1"),
    }[case]
    return ["--out", str(out), option, value], expected


@pytest.mark.parametrize("case", ["out_is_a_file", "out_holds_other_files", "out_under_a_file", "tokenizer_is_a_file",
                                  "validation_fraction", "max_length", "limit_per_split"])
def test_iclm_data_refuses_bad_arguments_before_building(tmp_path, capsys, no_build, case):
    argv, expected = _data_case(tmp_path, case)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    started = time.perf_counter()
    code = cli(["data", *argv, "--tasks", "acre", "--renderings", "symbolic"])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("iclm data: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(expected, err), err
    assert elapsed < QUICK, f"took {elapsed:.2f}s"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_iclm_data_replaces_only_its_own_earlier_output(tmp_path, capsys):
    out = tmp_path / "bench"
    small = ["data", "--out", str(out), "--tasks", "acre", "--renderings", "symbolic", "--limit-per-split", "2"]
    assert cli([*small[:-1], "3", "--renderings", "text"]) == 0
    assert cli(small) == 0
    assert "Replaced the earlier benchmark" in capsys.readouterr().out
    import datasets

    saved = datasets.load_from_disk(str(out))
    assert len(saved["acre_symbolic_iid"]) == 2
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == set(saved), "the earlier output's splits must not linger"
    assert not [p for p in tmp_path.iterdir() if p.name != "bench"]  # no staging folder left behind
    _write(out / "notes.txt", "mine")
    assert cli(small) == 1 and "already holds other files" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ iclm experiment
@pytest.fixture
def no_run(monkeypatch):
    """Running the experiment is a failure for a bad option; a good one reaches this fake runner."""
    reached = []
    fake = types.ModuleType("iclm.experiment.runner")
    fake.ExperimentConfig = lambda **kwargs: kwargs
    fake.run_experiment = reached.append
    monkeypatch.setitem(sys.modules, "iclm.experiment.runner", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return reached


EXPERIMENT_CASES = {
    "dtype": (["--dtype", "float64x"], r"argument --dtype: 'float64x' is not a supported dtype: use one of auto, "
                                       r"float32, bfloat16, float16"),
    "missing_folder": (["--base-model", "./no/such/dir"], r"--base-model: the folder '\./no/such/dir' does not exist"),
    "uncached_hub_id": (["--base-model", "someone/uncached-model"], r"could not be resolved offline"),
    "file_as_model": (["--base-model", "MODELS/weights.bin"], r"weights\.bin' is a file"),
    "bert_encoder": (["--base-model", "MODELS/bert"], r"is a 'bert' encoder \(is_decoder is not set\): a masked LM "
                                                      r".*Use a decoder-only causal LM"),
    "no_causal_head": (["--base-model", "MODELS/distilbert"], r"'distilbert' model without a causal-LM head"),
    "encoder_decoder": (["--base-model", "MODELS/t5"], r"'t5' encoder-decoder \(sequence-to-sequence\) model"),
    "out_is_a_file": (["--out", "FILE"], r"--out .*afile is an existing file, not a folder"),
    "out_holds_other_files": (["--out", "FOREIGN"], r"already holds other files \(notes\.txt\).*earlier `iclm "
                                                    r"experiment` run, which is resumed"),
    "cache_dir_is_a_file": (["--cache-dir", "FILE"], r"--cache-dir .*afile is an existing file"),
    "zero_seeds": (["--seeds", "0"], r"--seeds must be >= 1, got 0"),
    "zero_steps": (["--max-steps", "0"], r"--max-steps must be >= 1, got 0"),
    "negative_batch": (["--batch-size", "-2"], r"--batch-size must be >= 1, got -2"),
    "one_test_row": (["--test-per-split", "1"], r"--test-per-split must be >= 2 \(the module-correlation analysis "
                                               r"compares rows\), got 1"),
    "zero_learning_rate": (["--learning-rate", "0"], r"--learning-rate must be > 0, got 0\.0"),
    "zero_adapter_layers": (["--adapter-layers", "0"], r"--adapter-layers must be >= 1, got 0"),
    "trunk_as_deep_as_the_base": (["--adapter-layers", "2"], r"--adapter-layers 2: the base has 2 decoder layers, so "
                                                             r"a shared trunk needs 1 <= K < 2"),
    "unknown_system": (["--systems", "iclm", "moe"], r"Unknown system\(s\) \['moe'\]"),
    "derived_without_source": (["--systems", "iclm_domain_only"], r"add 'iclm' to --systems"),
}


@pytest.mark.parametrize("case", sorted(EXPERIMENT_CASES))
def test_iclm_experiment_refuses_bad_options_before_building(tmp_path, models, capsys, no_run, case):
    options, expected = EXPERIMENT_CASES[case]
    _write(tmp_path / "afile", "keep me")
    (tmp_path / "foreign").mkdir()
    _write(tmp_path / "foreign" / "notes.txt", "keep me")
    places = {"FILE": str(tmp_path / "afile"), "FOREIGN": str(tmp_path / "foreign")}
    options = [places.get(o, o.replace("MODELS", str(models))) for o in options]
    argv = ["experiment", "--preset", "smoke", "--out", str(tmp_path / "run"), *options]
    started = time.perf_counter()
    if case == "dtype":
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        code = exit_.value.code
    else:
        code = cli(argv)
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code in (1, 2) and re.search(expected, err), err
    assert not no_run and elapsed < QUICK, f"reached the runner / took {elapsed:.2f}s"
    assert not (tmp_path / "run").exists() and (tmp_path / "afile").read_text() == "keep me"


def test_iclm_experiment_4bit_without_bitsandbytes_is_refused(tmp_path, capsys, no_run, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "bitsandbytes" else find_spec(name, *rest))
    assert cli(["experiment", "--preset", "smoke", "--out", str(tmp_path / "run"), "--load-in-4bit"]) == 1
    assert "--load-in-4bit needs the bitsandbytes package (pip install bitsandbytes)" in capsys.readouterr().err
    assert not no_run and not (tmp_path / "run").exists()


def test_iclm_experiment_accepts_a_causal_base_and_an_earlier_run(tmp_path, models, no_run):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "experiment.json", "{}")  # an interrupted run: resumed, as --out documents
    assert cli(["experiment", "--preset", "smoke", "--out", str(run), "--base-model", str(models / "llama"),
                "--dtype", "torch.float32"]) == 0
    assert no_run[0]["base_model"] == str(models / "llama") and no_run[0]["dtype"] == "float32"


# ------------------------------------------------------------------------------------------------ train_iclm.py
@pytest.fixture
def train_main(monkeypatch):
    """examples/train_iclm.py's main, with loading the tokenizer or base made a failure (checks come first)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    module = importlib.import_module("train_iclm")

    class Trap:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the base was loaded before the arguments and data were checked")

    monkeypatch.setattr(module, "AutoTokenizer", Trap)
    monkeypatch.setattr(module, "AutoModelForCausalLM", Trap)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return module.main


TRAIN_CASES = {
    "dtype": ({"--dtype": "float64x"}, _lines(GOOD), ValueError, r"--dtype 'float64x' is not a supported dtype"),
    "aggregation": ({"--aggregation": "mean"}, _lines(GOOD), ValueError,
                    r"--aggregation 'mean' is not one of hidden_states, logits, probas"),
    "max_length": ({"--max_length": "0"}, _lines(GOOD), ValueError, r"--max_length must be a positive number"),
    "missing_base": ({"--base_model": "./no/such/dir"}, _lines(GOOD), FileNotFoundError,
                     r"--base_model: the folder '\./no/such/dir' does not exist"),
    "bert_base": ({"--base_model": "MODELS/bert"}, _lines(GOOD), ValueError, r"--base_model .* is a 'bert' encoder"),
    "output_dir_is_a_file": ({"--output_dir": "FILE"}, _lines(GOOD), FileExistsError,
                             r"--output_dir .*afile' is an existing file"),
    "malformed_line": ({}, _lines(GOOD, "{oops"), ValueError, r"train\.jsonl:2: malformed JSON line .*" + FORM),
    "missing_answer": ({}, _lines({"prompt": "a "}), ValueError, r"train\.jsonl:1: missing the 'answer' field"),
    "empty_file": ({}, "", ValueError, r"train\.jsonl: file is empty"),
    "domain_id_is_a_name": ({}, _lines({**GOOD, "domain_id": "acre"}), ValueError,
                            r"train\.jsonl:1: domain_id is 'acre' .*must be an int index 0\.\.N-1"),
    "oracle_domain_out_of_range": ({"--use_oracle_routing": "true"}, _lines({**GOOD, "domain_id": 0},
                                                                             {**GOOD, "domain_id": 2}),
                                   ValueError, r"train\.jsonl:2: domain_id is 2, but there are 2 domains"),
    "missing_train_file": ({"--train_file": "NOWHERE"}, "", FileNotFoundError,
                           r"--train_file '.*nowhere\.jsonl' does not exist; give a JSON-lines file"),
    "folder_not_from_iclm_data": ({"--train_file": "FOLDER"}, "", ValueError,
                                  r"is a folder but not one written by `iclm data --out` \(it has no dataset_dict"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_example_checks_arguments_and_data_before_loading(tmp_path, models, train_main, case):
    options, data, error, expected = TRAIN_CASES[case]
    train = _write(tmp_path / "train.jsonl", data)
    _write(tmp_path / "afile", "keep me")
    (tmp_path / "folder").mkdir()
    places = {"FILE": str(tmp_path / "afile"), "NOWHERE": str(tmp_path / "nowhere.jsonl"),
              "FOLDER": str(tmp_path / "folder")}
    argv = {"--base_model": str(models / "llama"), "--train_file": str(train), "--output_dir": str(tmp_path / "out"),
            "--report_to": "none", "--max_steps": "1"}
    argv.update({k: places.get(v, v.replace("MODELS", str(models))) for k, v in options.items()})
    with pytest.raises(error, match=expected):
        train_main([item for pair in argv.items() for item in pair])
    assert (tmp_path / "afile").read_text() == "keep me"


def test_train_example_reads_null_domain_ids_as_absent(tmp_path, train_main):
    module = sys.modules["train_iclm"]
    path = _write(tmp_path / "train.jsonl", _lines({**GOOD, "domain_id": None}, {**GOOD, "domain_id": None}))
    dataset = module.load_training_data(module.DataArguments(train_file=str(path)))
    assert dataset.column_names == ["prompt", "answer"] and len(dataset) == 2


def test_train_example_script_reports_a_bad_argument_in_one_line(tmp_path, models):
    train = _write(tmp_path / "train.jsonl", _lines(GOOD))
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "train_iclm.py"), "--base_model", str(models / "llama"),
         "--train_file", str(train), "--output_dir", str(tmp_path / "out"), "--dtype", "float64x"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT},
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("train_iclm.py: error: --dtype 'float64x' is not a "
                                                           "supported dtype: use one of auto")
    assert "Traceback" not in done.stderr


def test_train_example_trains_on_a_checked_file(tmp_path, models, monkeypatch):
    """The checked reader keeps every row and field: one real training step on a tiny Llama."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    from conftest import two_domain_rows, vocabulary

    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    word_tokenizer(vocabulary()).save_pretrained(base)
    rows = [{**row, "problem_id": f"p{i}"} for i, row in enumerate(two_domain_rows(8))]
    train = _write(tmp_path / "train.jsonl", "\n\n".join(json.dumps(row) for row in rows))
    trainer = importlib.import_module("train_iclm").main([
        "--base_model", str(base), "--train_file", str(train), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
        "--router_init_samples", "8", "--max_length", "64", "--use_cpu",
    ])
    assert trainer.train_dataset.to_list() == rows and trainer.state.global_step == 1
