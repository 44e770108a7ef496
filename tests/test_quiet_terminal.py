"""Quiet, readable terminals (issue 18, item 6): no import-time noise, progress a log file can hold, no raw log
dicts, no bold on ties of nothing."""

import io
import logging
import subprocess
import sys
import warnings

import torch
from conftest import tiny_llama, two_domain_rows, vocabulary, word_tokenizer
from datasets import Dataset

from iclm.analysis.tables import results_markdown
from iclm.tasks import AnswerOnlyCollator
from iclm.terminal import IMPORT_NOISE, progress, silence_import_noise
from modeling_iclm import IclmForCausalLM
from trainer_iclm import IclmProgressCallback, IclmTrainer, IclmTrainingArguments

SPLITS = {"acre/text/iid": {"ood": False, "chance": 1 / 3}, "acre/text/comp": {"ood": True, "chance": 1 / 3}}


def test_the_command_line_imports_without_noise():
    run = subprocess.run([sys.executable, "-c", "import iclm.cli, modeling_iclm, trainer_iclm"], capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert "Failed to load" not in run.stderr and "_pytree" not in run.stderr, run.stderr[:2000]


def test_only_the_known_noise_is_dropped(caplog):
    silence_import_noise()
    for name, text in IMPORT_NOISE:
        logger = logging.getLogger(name)
        with caplog.at_level(logging.WARNING, logger=name):
            logger.warning("x %s y", text)
            logger.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"] * len(IMPORT_NOISE)


def test_progress_without_a_terminal_writes_one_line_per_top_level_loop():
    stream = io.StringIO()
    assert list(progress(range(3), "systems", stream=stream)) == [0, 1, 2]
    assert list(progress(range(5), "rows", level=1, stream=stream)) == list(range(5))
    assert stream.getvalue().startswith("systems: 3 done in ") and stream.getvalue().count("\n") == 1


def test_no_bold_when_every_system_ties():
    results = {"a": {"acre/text/iid": {"mean": 0.0, "n": 1}, "acre/text/comp": {"mean": 0.5, "n": 1}},
               "b": {"acre/text/iid": {"mean": 0.0, "n": 1}, "acre/text/comp": {"mean": 0.25, "n": 1}}}
    table = results_markdown(results, SPLITS)
    assert "**0.000**" not in table and "**0.500**" in table and table.count("**") == 2


def test_trainer_prints_no_raw_log_dicts(tmp_path, capsys, caplog):
    tokenizer = word_tokenizer(vocabulary())
    trainer = IclmTrainer(model=IclmForCausalLM.from_base(tiny_llama(), num_domains=2),
                          args=IclmTrainingArguments(output_dir=str(tmp_path), report_to="none", max_steps=2,
                                                     logging_steps=1, per_device_train_batch_size=4,
                                                     router_init_samples=8, save_strategy="no"),
                          train_dataset=Dataset.from_list(two_domain_rows(8)),
                          data_collator=AnswerOnlyCollator(tokenizer, max_length=64))
    assert sum(isinstance(c, IclmProgressCallback) for c in trainer.callback_handler.callbacks) == 1
    with caplog.at_level(logging.INFO, logger="trainer_iclm"):
        trainer.train()
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out and "'loss':" not in captured.err
    assert any(r.getMessage().startswith("step 1/2: loss=") for r in caplog.records)
    assert any(r.getMessage().startswith("trained 2 step(s), loss ") for r in caplog.records)


def test_quiet_collators_report_cut_prompts_once_per_setting(monkeypatch):
    from iclm.tasks import collator as module

    monkeypatch.setattr(AnswerOnlyCollator, "report_every_collator", False)
    monkeypatch.setattr(module, "_REPORTED_MAX_LENGTHS", set())
    tokenizer = word_tokenizer(vocabulary())
    row = {"prompt": "a1 a2 a3 a4 a5 a6 a7 a8 ", "answer": "x1"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            AnswerOnlyCollator(tokenizer, max_length=5)([row])
    assert len([w for w in caught if "cut the prompt" in str(w.message)]) == 1
    assert torch.is_tensor(AnswerOnlyCollator(tokenizer, max_length=5)([row])["input_ids"])


def test_quiet_run_restores_what_it_changed():
    import datasets

    from iclm.terminal import quiet_run

    datasets.enable_progress_bars()  # an earlier in-process command (`iclm data`) may have turned them off for good
    with quiet_run(io.StringIO()) as quiet:
        assert quiet and not AnswerOnlyCollator.report_every_collator and not datasets.is_progress_bar_enabled()
    assert AnswerOnlyCollator.report_every_collator and datasets.is_progress_bar_enabled()
