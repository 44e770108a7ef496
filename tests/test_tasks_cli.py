"""``iclm data`` end to end through ``iclm.cli.main``."""

import datasets
import pytest

from iclm.cli import COMMANDS, build_parser, main
from iclm.tasks import load_task
from tests.test_tasks_helpers import benchmark_texts, tiny_tokenizer

SPLIT_COUNT = 20  # 2 tasks x 2 renderings x 5 splits


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer(benchmark_texts()).save_pretrained(path)
    return path


def test_data_writes_the_benchmark_and_prints_statistics(tmp_path, tokenizer_dir, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "data",
            "--out",
            str(out),
            "--tokenizer",
            str(tokenizer_dir),
            "--raven-per-config",
            "6",
            "--limit-per-split",
            "9",
            "--seed",
            "2",
            "--max-length",
            "300",
        ]
    )
    assert code == 0
    saved = datasets.load_from_disk(str(out))
    assert len(saved) == SPLIT_COUNT
    assert len(saved["acre_text_comp"]) == 9 and len(saved["raven_symbolic_distribute_four"]) == 6
    assert all(saved["raven_text_in_center_single_out_center_single"]["generated"])
    # The same rows as the Python API with the same settings.
    expected = load_task("raven", "symbolic", "validation", limit=9, seed=2)
    assert list(saved["raven_symbolic_validation"]["problem_id"]) == list(expected["problem_id"])
    assert list(saved["raven_symbolic_validation"]["prompt"]) == list(expected["prompt"])
    printed = capsys.readouterr().out
    assert f"Saved {SPLIT_COUNT} splits" in printed
    lines = {line.split()[0]: line for line in printed.splitlines() if line.startswith(("acre_", "raven_"))}
    assert set(lines) == set(saved)
    assert "tokens min/mean/max" in printed and "> max_length" in printed
    # RAVEN text prompts exceed 300 tokens with this tokenizer, ACRE symbolic ones do not.
    assert lines["raven_text_center_single"].split()[-1] == "9"
    assert lines["acre_symbolic_iid"].split()[-1] == "0"
    assert "off:" in lines["acre_text_train"] and "A:" in lines["raven_text_train"]


def test_data_without_tokenizer_skips_token_statistics(tmp_path, capsys):
    code = main(
        ["data", "--out", str(tmp_path / "b"), "--tasks", "acre", "--renderings", "symbolic", "--limit-per-split", "5"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "tokens" not in printed
    assert set(datasets.load_from_disk(str(tmp_path / "b"))) == {
        f"acre_symbolic_{split}" for split in ("train", "validation", "iid", "comp", "sys")
    }


def test_tokenizer_without_pad_token_still_gets_statistics(tmp_path, capsys):
    folder = tmp_path / "nopad"
    tiny_tokenizer(["a few words to train on", "[1, 2] -> 0"], pad=None).save_pretrained(folder)
    code = main(
        [
            "data",
            "--out",
            str(tmp_path / "c"),
            "--tokenizer",
            str(folder),
            "--tasks",
            "acre",
            "--renderings",
            "symbolic",
            "--limit-per-split",
            "3",
        ]
    )
    assert code == 0
    assert "no pad token; using its eos token" in capsys.readouterr().out


def test_bad_arguments_are_reported(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "d"), "--raven-per-config", "-1"]) == 1
    assert "--raven-per-config must not be negative" in capsys.readouterr().err
    assert (
        main(["data", "--out", str(tmp_path / "e"), "--tokenizer", str(tmp_path / "missing"), "--tasks", "acre"]) == 1
    )
    assert "Tokenizer folder" in capsys.readouterr().err and not (tmp_path / "e").exists()
    with pytest.raises(SystemExit):
        main(["data", "--out", str(tmp_path / "f"), "--tasks", "arc"])
    with pytest.raises(SystemExit):
        main([])


def test_subcommands_come_from_one_registry():
    parser = build_parser()
    assert "data" in COMMANDS  # other subcommands (e.g. experiment) register the same way
    assert parser.parse_args(["data", "--out", "x"]).run is COMMANDS["data"][2]
