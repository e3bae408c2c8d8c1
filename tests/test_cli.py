"""The ``lineas-tl`` command: fit then generate on a tiny saved model, helpful errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lineas_tl.cli import app, read_prompts

runner = CliRunner()


@pytest.fixture
def prompt_files(tmp_path: Path, text_sets) -> dict[str, Path]:
    src, tgt = tmp_path / "source.txt", tmp_path / "target.json"
    src.write_text("\n".join(text_sets["source"][:8]) + "\n\n")
    tgt.write_text(json.dumps(text_sets["target"][:8]))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    return {"source": src, "target": tgt, "empty": empty}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # one line, and the last
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def saved_steerer(tmp_path_factory, gpt2_dir) -> Path:
    """One ``lineas-tl fit`` run on the tiny GPT-2, shared by the generate tests."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import SOURCE_WORDS, TARGET_WORDS, make_prompts

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "s.txt").write_text("\n".join(make_prompts(SOURCE_WORDS, 8, 1)))
    (tmp / "t.txt").write_text("\n".join(make_prompts(TARGET_WORDS, 8, 2)))
    out = tmp / "steerer"
    result = invoke(
        "fit", "--model", gpt2_dir, "--source", tmp / "s.txt", "--target", tmp / "t.txt",
        "--steps", 3, "--seed", 1, "-p", "lr=0.05", "--out", out, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert "saved lineas steerer (3 sites" in result.stdout  # ln2.hook_out of each block and str(out) in result.stdout
    return out


def test_fit_writes_a_loadable_steerer(saved_steerer, gpt2_dir):
    from lineas_tl import HookedSteerer
    from lineas_tl.models import load

    meta = json.loads((saved_steerer / "steerer.json").read_text())
    assert meta["method"] == "lineas" and meta["hparams_given"] == {"lr": 0.05, "steps": 3, "seed": 1}
    assert {"lr": 0.05, "steps": 3, "seed": 1, "gamma": 0.0}.items() <= meta["hparams"].items()  # defaults too
    assert meta["model"]["name"] == str(Path(gpt2_dir).resolve())
    steerer = HookedSteerer.load(saved_steerer, load(str(gpt2_dir)))
    assert len(steerer.maps_) == 3


def test_fit_with_control_and_gate_saves_a_gated_steerer(prompt_files, gpt2_dir, tmp_path):
    from lineas_tl import HookedSteerer
    from lineas_tl.models import load

    control = tmp_path / "control.txt"
    control.write_text("the weather today is warm\na train left the station\nthe museum opened at nine\n"
                       "she read a book in the park\nthe river runs to the sea\nwe walked along the old road\n")  # fmt: skip
    out = tmp_path / "gated"
    common = ("fit", "--model", gpt2_dir, "--source", prompt_files["source"], "--target", prompt_files["target"],
              "--method", "mean_act", "--out", out, "--no-progress")  # fmt: skip
    assert_one_line_error(invoke(*common, "--gate"), "control")
    result = invoke(*common, "--control", control, "--gate")
    assert result.exit_code == 0, result.output + result.stderr
    assert "gate (prompt)" in result.stdout
    assert HookedSteerer.load(out, load(str(gpt2_dir))).gate_ is not None
    result = invoke(*common, "--control", control, "--gate-option", "shared=true", "--gate-option", "hard=true")
    assert result.exit_code == 0, result.output + result.stderr
    assert "shared hard gate (prompt vote)" in result.stdout
    assert_one_line_error(invoke(*common, "--control", control, "--gate-option", "shared"), "--gate-option expects KEY=VALUE")


def test_generate_with_the_fitted_steerer(saved_steerer, gpt2_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("you are a\nhave a lovely\n")
    common = ["--model", gpt2_dir, "--steerer", saved_steerer, "--max-new-tokens", 5, "--no-progress"]
    result = invoke(
        "generate", *common, "--prompts", prompts, "--prompt", "the cat", "--strength", 4, "--unsteered", "--json"
    )
    assert result.exit_code == 0, result.output + result.stderr
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["the cat", "you are a", "have a lovely"]
    assert all(isinstance(r["steered"], str) and isinstance(r["unsteered"], str) for r in records)

    folded = invoke(
        "generate", *common, "--prompts", prompts, "--prompt", "the cat", "--strength", 4, "--fold", "--json"
    )
    assert folded.exit_code == 0, folded.output + folded.stderr
    assert [r["steered"] for r in json.loads(folded.stdout)] == [r["steered"] for r in records]

    text = invoke("generate", *common, "--prompt", "the cat", "--inverse")
    assert text.exit_code == 0 and text.stdout.startswith("> the cat\n  steered (1, inverse): the cat")
    # without --model: the model the steerer was fitted on (recorded in its JSON), not SmolLM2
    own = invoke("generate", *common[2:], "--prompt", "the cat", "--inverse")
    assert own.exit_code == 0, own.output + own.stderr
    assert own.stdout == text.stdout


def test_export_writes_a_steered_hugging_face_model(saved_steerer, gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    result = invoke(
        "export", "--model", gpt2_dir, "--steerer", saved_steerer, "-f", "hf", "--out", tmp_path / "m", "--strength", 2
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "wrote the steered model (strength 2)" in result.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m") is not None
    again = invoke("export", "--model", gpt2_dir, "--steerer", saved_steerer, "-f", "hf", "--out", tmp_path / "m")
    assert_one_line_error(again, "not an empty directory")
    # the default format is gguf, as in Python's steerer.export (a GPT-2 has no GGUF to fold into)
    default = invoke("export", "--steerer", saved_steerer, "--out", tmp_path / "m.gguf")
    assert_one_line_error(default, "gpt2")


def test_compare_tabulates_methods(gpt2_dir, prompt_files, tmp_path):
    evals = tmp_path / "eval.txt"
    evals.write_text("the weather is\nmy dog likes\n")
    result = invoke(
        "compare", "--model", gpt2_dir, "--source", prompt_files["source"], "--target", prompt_files["target"],
        "--eval-prompts", evals, "--method", "mean_act", "--strength", 0, "--strength", 1, "--extra-strength", "none",
        "--max-new-tokens", 3, "--out", tmp_path / "cmp", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert "mean_act" in result.stdout and "perplexity" in result.stdout
    assert (tmp_path / "cmp" / "comparison.csv").exists()
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert sorted(table["strength"].dropna().unique()) == [0, 1]
    again = invoke("frontier", "--table", tmp_path / "cmp" / "comparison.csv", "--select", "calibrated", "--budget", "0.5")
    assert again.exit_code == 0, again.output
    assert "mean_act" in again.stdout and "≤ +50% ppl" in again.stdout
    old = invoke("frontier", tmp_path / "cmp" / "comparison.csv", "--select", "calibrated", "--budget", "0.5")
    assert old.exit_code == 0 and old.stdout == again.stdout and "deprecated" in old.stderr
    assert_one_line_error(invoke("frontier", "--table", tmp_path / "none.csv"), "is not a file")


def test_info_describes_the_steerer(saved_steerer):
    result = invoke("info", "--steerer", saved_steerer)
    assert result.exit_code == 0, result.output
    assert "method:      lineas" in result.stdout and "3 sites" in result.stdout
    assert "blocks.0.ln2.hook_out  affine (32,)" in result.stdout
    assert '"gamma": 0.0' in result.stdout and "chat_pool=user" in result.stdout  # defaults recorded
    old = invoke("info", saved_steerer)  # the positional form: deprecated, still works
    assert old.exit_code == 0 and old.stdout == result.stdout and "--steerer DIR" in old.stderr
    assert_one_line_error(invoke("info"), "--steerer DIR")


@pytest.mark.parametrize("command", [[], ["fit"], ["generate"], ["compare"], ["export"], ["demo"], ["info"], ["frontier"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_help_lists_commands_in_workflow_order_and_version_works():
    from lineas_tl import __version__

    lines = invoke("--help").stdout.splitlines()
    listed = [line.split()[1] for line in lines if line.startswith("│ ") and not line[2].isspace()]
    commands = [c for c in listed if not c.startswith("-")]
    assert commands[:6] == ["fit", "generate", "calibrate", "compare", "export", "info"], commands
    version = invoke("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"lineas-tl {__version__}"


def test_fit_help_names_every_method_and_the_default_sites():
    from lineas_tl.methods import METHODS

    text = " ".join(invoke("fit", "--help").stdout.replace("│", " ").split())
    for name in METHODS:
        assert name in text, name
    assert "ln1_post/ln2_post" in text and "outputs" in text and "norms" in text


def test_export_help_defaults_to_gguf():
    text = " ".join(invoke("export", "--help").stdout.replace("│", " ").split())
    assert "[default: gguf]" in text


def test_comma_lists_are_split_with_a_deprecation_notice(capsys):
    from lineas_tl.cli_support import split_list

    assert split_list(["lineas", "caa"], "--method") == ["lineas", "caa"]
    assert split_list(["lineas,caa"], "--method") == ["lineas", "caa"]
    assert "repeat --method" in capsys.readouterr().err


def test_no_arguments_shows_the_commands():
    result = invoke()
    assert "fit" in result.output and "generate" in result.output


# ----------------------------------------------------------------------------- bad input
def test_missing_prompt_file(gpt2_dir, prompt_files, tmp_path):
    result = invoke("fit", "--model", gpt2_dir, "--source", tmp_path / "nope.txt", "--target", prompt_files["target"])
    assert_one_line_error(result, "nope.txt", "does not exist")


def test_empty_prompt_file(gpt2_dir, prompt_files):
    result = invoke("fit", "--model", gpt2_dir, "--source", prompt_files["empty"], "--target", prompt_files["target"])
    assert_one_line_error(result, "empty.txt", "holds no prompts")


def test_unknown_method(gpt2_dir, prompt_files):
    result = invoke(
        "fit",
        "--model",
        gpt2_dir,
        "--source",
        prompt_files["source"],
        "--target",
        prompt_files["target"],
        "--method",
        "magic",
    )
    assert_one_line_error(result, "unknown method 'magic'", "lineas")


def test_hyper_parameter_the_method_does_not_take(gpt2_dir, prompt_files):
    result = invoke(
        "fit", "--model", gpt2_dir, "--source", prompt_files["source"], "--target", prompt_files["target"],
        "--method", "linear_act", "--steps", 10,
    )  # fmt: skip
    assert_one_line_error(result, "'linear_act' has no hyper-parameter 'steps'", "sequential")


def test_wrong_site(gpt2_dir, prompt_files, tmp_path):
    result = invoke(
        "fit", "--model", gpt2_dir, "--source", prompt_files["source"], "--target", prompt_files["target"],
        "--site", "blocks.0.hook_atn_out", "--out", tmp_path / "s",
    )  # fmt: skip
    assert_one_line_error(result, "'blocks.0.hook_atn_out' is not a hook point", "Did you mean")


def test_missing_model_directory(prompt_files, tmp_path):
    result = invoke(
        "fit", "--model", tmp_path / "no-model", "--source", prompt_files["source"], "--target", prompt_files["target"]
    )
    assert_one_line_error(result, "no-model")


def test_generate_with_no_steerer_or_no_prompt(saved_steerer, gpt2_dir, tmp_path):
    result = invoke("generate", "--model", gpt2_dir, "--steerer", tmp_path / "none", "--prompt", "hi")
    assert_one_line_error(result, "no saved steerer")
    result = invoke("generate", "--model", gpt2_dir, "--steerer", saved_steerer)
    assert_one_line_error(result, "no prompts")


def test_generate_onto_another_model_names_the_mismatch(saved_steerer, llama_dir):
    result = invoke(
        "generate", "--model", llama_dir, "--steerer", saved_steerer, "--prompt", "hi", "--max-new-tokens", 2
    )
    assert_one_line_error(result, "another architecture", "GPT2LMHeadModel")


def test_bad_param_syntax(gpt2_dir, prompt_files):
    result = invoke(
        "fit",
        "--model",
        gpt2_dir,
        "--source",
        prompt_files["source"],
        "--target",
        prompt_files["target"],
        "-p",
        "gamma",
    )
    assert_one_line_error(result, "KEY=VALUE")


def test_compare_passes_gate_options_to_gated_methods(gpt2_dir, prompt_files, tmp_path):
    evals, control = tmp_path / "eval.txt", tmp_path / "control.txt"
    evals.write_text("the weather is\nmy dog likes\n")
    control.write_text("the river runs to the sea\na train left the station\nthe museum opened at nine\n"
                       "she read a book in the park\nwe walked along the old road\nthe shop sells bread\n")  # fmt: skip
    common = ("compare", "--model", gpt2_dir, "--source", prompt_files["source"], "--target", prompt_files["target"],
              "--eval-prompts", evals, "--strength", 0, "--strength", 1, "--extra-strength", "none",
              "--max-new-tokens", 3, "--no-progress", "--gate-option", "shared=true", "--gate-option", "hard=true")  # fmt: skip
    assert_one_line_error(invoke(*common, "--method", "mean_act"), "--gate-option applies to gated methods")
    result = invoke(*common, "--method", "mean_act+gate", "--control", control, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output + result.stderr
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert "mean_act+gate" in set(table["method"])
    assert table["ppl_increase"].abs().max() < 0.5  # a hard gate leaves most reference text alone


def test_compare_needs_prompts_or_a_concept(gpt2_dir):
    result = invoke("compare", "--model", gpt2_dir)
    assert_one_line_error(result, "--concept")


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("  one \n\ntwo\n")
    (tmp_path / "b.json").write_text('["x", " ", "y"]')
    (tmp_path / "c.json").write_text('{"not": "a list"}')
    assert read_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert read_prompts(tmp_path / "b.json") == ["x", "y"]
    with pytest.raises(ValueError, match="JSON list of strings"):
        read_prompts(tmp_path / "c.json")


def test_calibrate_then_generate_at_the_calibrated_strength(saved_steerer, gpt2_dir, tmp_path):
    import shutil

    st = tmp_path / "st"
    shutil.copytree(saved_steerer, st)
    common = ["--model", gpt2_dir, "--steerer", st]
    before = invoke("generate", *common, "--prompt", "the cat", "--strength", "calibrated", "--no-progress")
    assert_one_line_error(before, "no calibrated strength", "calibrate")
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\na dog ran in the park with a red ball\nhave a lovely day\n")
    result = invoke("calibrate", *common, "--texts", texts, "--max-ppl-increase", 0.01)
    assert result.exit_code == 0, result.output + result.stderr
    assert "calibrated strength" in result.stdout and "+1%" in result.stdout
    meta = json.loads((st / "steerer.json").read_text())
    value = meta["calibration"]["strength"]
    assert 0 <= value <= 1 and meta["calibration"]["max_ppl_increase"] == 0.01
    assert "calibrated:  strength" in invoke("info", st).stdout
    args = ["--prompt", "the cat", "--max-new-tokens", 4, "--no-progress", "--json"]
    cal = invoke("generate", *common, *args, "--strength", "calibrated")
    num = invoke("generate", *common, *args, "--strength", repr(value))
    assert cal.exit_code == 0, cal.output + cal.stderr
    assert json.loads(cal.stdout) == json.loads(num.stdout)
    assert_one_line_error(invoke("generate", *common, *args, "--strength", "strong"), "--strength", "calibrated")


def test_demo_rejects_quick_and_full_together():
    assert_one_line_error(invoke("demo", "--quick", "--full"), "--quick", "--full")


def test_compare_paired_refuses_a_concept_without_paired_pools(gpt2_dir):
    result = invoke("compare", "--model", gpt2_dir, "--concept", "style", "--paired", "--no-progress")
    assert_one_line_error(result, "not paired prompt by prompt")
