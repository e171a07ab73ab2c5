"""toy_table.py without its runs: the arms' flags, the lr sweep's folders, the comparison with the base model."""
import pytest

import toy_table


def test_every_arm_is_a_valid_sept_mini_command_line(tmp_path):
    from plumbing import cli
    for arm in toy_table.ARMS:
        args = cli.parse_args([*toy_table.arm_flags(arm), "--out", str(tmp_path / arm)])
        assert args.objective == {"emft": "emft", "grpo": "grpo"}.get(arm, "sept")
        if arm in ("emft", "grpo"):  # the rivals sample at tau 1 and see SePT's 128 answers per round
            assert args.tau_sample == 1.0 and args.prompts_per_round * args.rollouts == 128


def test_a_swept_lr_replaces_the_arms_own_and_gets_its_own_folder():
    assert toy_table.arm_flags("grpo", "1e-4").count("--lr") == 1 and toy_table.arm_flags("grpo", "1e-4")[-2:] == [
        "--lr", "1e-4"]
    assert toy_table.arm_flags("online", "1e-4") == ["--lr", "1e-4"]
    assert toy_table.run_folder("out", "grpo", 3, "1e-4").endswith("grpo-lr1e-4-s3")
    assert toy_table.run_folder("out", "grpo", 3).endswith("grpo-s3")


def test_bad_lrs_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        toy_table.main(["--arms", "grpo", "--lrs", "1e-4,fast"])
    assert e.value.code == 2
    assert "--lrs" in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_arm_beats_the_base_only_where_it_is_strictly_above_on_that_seed():
    versus_base = {"base": {0: {"tau": 0.4, "pass@1": 80.0, "pass@8": 100.0},
                            1: {"tau": 0.6, "pass@1": 70.0, "pass@8": 99.0}},
                   "grpo": {0: {"pass@1": 85.0, "pass@8": 100.0}, 1: {"pass@1": 60.0, "pass@8": 99.5}}}
    lines = toy_table.base_lines(versus_base, 256)
    assert "s0 0.4, s1 0.6" in lines[1]
    assert lines[-1] == "| grpo | 72.5 ± 17.7 | 99.8 ± 0.4 | 1/2 seeds | 1/2 seeds |"


def test_an_evaluation_that_stops_on_bad_input_is_one_line_naming_it(tmp_path):
    from plumbing import UsageError
    with pytest.raises(UsageError) as e:
        toy_table.evaluated(str(tmp_path / "no-such-model"), str(tmp_path / "eval"), "1.0", 0, 8)
    message = str(e.value)
    assert message.startswith(f"the evaluation of {tmp_path / 'no-such-model'} stopped: ") and "\n" not in message
    assert not (tmp_path / "eval" / "results.json").exists()
