"""``iclm bench --compile``: the compiled LoRA and ICLM variants it adds and the compiled-vs-eager ratios it prints
(the measurement itself compiles for minutes on a CPU: run by hand, see benchmarks/README.md)."""

import argparse

from iclm import bench


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.check_arguments(parser.parse_args(list(argv)))


def test_compile_adds_compiled_lora_and_iclm_variants():
    args = _args("--quick", "--compile")
    training, generation = bench.training_variants(args), bench.generation_variants(args)
    assert training["lora-compiled"] == bench.Variant("LoRA, torch.compile", "lora", compiled=True)
    assert training["iclm-compiled"].design == "iclm" and training["iclm-compiled"].compiled
    assert {name: (v.static, v.compiled) for name, v in generation.items() if v.static} == {
        "gen-lora-static": (True, False), "gen-iclm-static": (True, False),
        "gen-lora-compiled": (True, True), "gen-iclm-compiled": (True, True)}
    plain = _args("--quick")
    assert not any(v.compiled or v.static for v in [*bench.training_variants(plain).values(),
                                                     *bench.generation_variants(plain).values()])


def test_compile_summary_gives_compiled_vs_eager_ratios(capsys):
    training = {"lora": {"median_s": 1.0, "cpu_s": 2.0}, "lora-compiled": {"median_s": 0.5, "cpu_s": 1.5, "compile_s": 30},
                "iclm": {"median_s": 2.0, "cpu_s": 4.0}, "iclm-compiled": {"median_s": 1.5, "cpu_s": 2.0, "compile_s": 90}}
    generation = {"gen-lora": {"median_s": 1.0}, "gen-iclm": {"median_s": 2.0}, "gen-lora-static": {"median_s": 1.0},
                  "gen-iclm-static": {"median_s": 4.0}, "gen-lora-compiled": {"median_s": 0.5},
                  "gen-iclm-compiled": {"median_s": 1.0}}

    def r(name, key="median_s", reference="lora"):
        return training[name][key] / training[reference][key]

    ratios = bench._compile_summary(training, generation, r)
    assert ratios == {
        "train_step_ratio_lora_compiled_vs_eager": 0.5, "train_step_ratio_lora_compiled_vs_eager_cpu": 0.75,
        "train_step_ratio_iclm_compiled_vs_eager": 0.75, "train_step_ratio_iclm_compiled_vs_eager_cpu": 0.5,
        "train_step_ratio_n2_compiled": 3.0, "generate_tps_ratio_lora_compiled_vs_eager": 2.0,
        "generate_tps_ratio_iclm_compiled_vs_eager": 2.0, "generate_tps_ratio_static": 0.25,
        "generate_tps_ratio_compiled": 0.5}
    printed = capsys.readouterr().out
    assert "LoRA 0.50× (compile 30 s), ICLM 0.75× (compile 90 s); compiled ICLM = 3.00× compiled LoRA" in printed
