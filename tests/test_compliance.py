"""The official MLPerf compliance checker, closed division, on a short smoke run of every
benchmark it knows (ResNet, BERT, CosmoFlow, DeepCAM, OpenFold).

Each run is one short epoch: enough for every key the rules require. Most smoke logs say
``submission_division: open`` (with the reason); the test sets it to ``closed`` so that the
checker applies the closed rules of the ruleset the benchmark's log is written for
(``benchmarks.core.mllog.CLOSED_RULES``). Allowed failures are
values the smoke scale changes on purpose (target, dataset and model size, batch size, no start
checkpoint); a missing, duplicated or misnamed key always fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.core.mllog import CLOSED_RULES, submission_division
from tests.conftest import Completed, check_closed, run_mlbench

#: Per benchmark: its ``submission_benchmark`` value, the overrides that make the run short,
#: and the keys whose closed-rule checks the smoke scale fails on purpose.
SMOKE_RUNS = {
    "resnet50": ("resnet", ["training.n_epochs=1"],
                 {"eval_accuracy", "global_batch_size", "train_samples", "eval_samples"}),
    "bert_large": ("bert", ["training.n_epochs=1", "training.steps_per_epoch=2"],
                   {"eval_accuracy"}),
    "cosmoflow": ("cosmoflow", ["training.n_epochs=1"], {"eval_error"}),
    "deepcam": ("deepcam", ["training.n_epochs=1"],
                {"eval_accuracy", "train_samples", "eval_samples"}),
    "alphafold2": ("openfold", ["training.n_epochs=1", "training.steps_per_epoch=2"], {
        "eval_accuracy", "target_avg_lddt_ca_value", "train_samples", "eval_samples",
        # a tiny model on synthetic chains, from random weights
        "model_parameters_count", "init_checkpoint_sha256sum", "train_sequence_crop_size",
        "num_recycling_iters", "max_msa_clusters", "max_extra_msa", "templates_enabled",
        "opt_gradient_clip_norm", "val_every_iters", "train_max_pdb_release_date",
        "val_min_cameo_submission_date", "val_max_cameo_submission_date"}),
}

@pytest.fixture(scope="module")
def smoke_logs(tmp_path_factory: pytest.TempPathFactory):
    """One short smoke run per benchmark, written once for the module."""
    runs: dict[str, tuple[Completed, Path]] = {}

    def run(benchmark: str) -> tuple[Completed, Path]:
        if benchmark not in runs:
            folder = tmp_path_factory.mktemp(f"compliance-{benchmark}")
            done = run_mlbench("synth", benchmark, str(folder / "data"))
            assert done.returncode == 0, done.stderr
            overrides = [f"training.log_file={folder / 'mllog.txt'}",
                         *SMOKE_RUNS[benchmark][1]]
            done = run_mlbench("train", benchmark, "--config", "smoke", "--data-dir",
                               str(folder / "data"),
                               *[arg for item in overrides for arg in ("--set", item)])
            assert done.returncode in (0, 3), done.stderr
            runs[benchmark] = done, folder
        return runs[benchmark]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_closed_rules_fail_only_on_smoke_scale_values(name, smoke_logs):
    mllog_name, _, on_purpose = SMOKE_RUNS[name]
    done, folder = smoke_logs(name)
    assert done.events("submission_benchmark")[0]["value"] == mllog_name
    (division,) = done.events("submission_division")
    assert division["value"] == "closed" or division["metadata"]["reason"]
    rules = CLOSED_RULES[mllog_name]
    failed, missing, report = check_closed(folder / "mllog.txt", folder, rules.usage,
                                           rules.ruleset)
    assert not missing, "\n".join(missing)
    assert failed <= on_purpose, report


@pytest.mark.slow
def test_checker_output_is_parsed(tmp_path):
    """The parser sees a missing key and a failed check in the checker's real output."""
    log = tmp_path / "log.txt"
    lines = [f':::MLLOG {{"namespace": "", "time_ms": {i}, "event_type": "POINT_IN_TIME", '
             f'"key": "{key}", "value": {value}, "metadata": {{"file": "x", "lineno": 1}}}}'
             for i, (key, value) in enumerate([
                 ("submission_benchmark", '"cosmoflow"'), ("submission_division", '"open"'),
                 ("submission_org", '"x"'), ("submission_platform", '"x"'),
                 ("submission_status", '"research"'), ("cache_clear", "true"),
                 ("global_batch_size", "-1")])]
    log.write_text("\n".join(lines) + "\n")
    failed, missing, _ = check_closed(log, tmp_path, "hpc", "3.0.0")
    assert "global_batch_size" in failed
    assert any("'init_start'" in message for message in missing)


def test_division_is_closed_only_where_the_checkable_rules_hold():
    assert submission_division("bert", 0.72, "phase1/model.ckpt-28252") == ("closed", "")
    division, reason = submission_division("bert", 0.70, "")
    assert division == "open" and "target 0.7 is not the rules' 0.72" in reason
    assert "no model.init_checkpoint" in reason
    division, reason = submission_division(
        "openfold", 0.8, "ckpt.pt", {"train_samples": 20, "opt_name": "Adam"})
    assert division == "open" and reason == "train_samples=20 (v['value'] == 594595)"
    assert submission_division("deepcam", 0.82, "", {"opt_eps": 1e-6})[0] == "closed"
    assert submission_division("deepcam", 0.82, "", {"opt_eps": 1e-8})[0] == "open"
    division, reason = submission_division(  # closed_deepcam.yaml enqueues the LAMB rules
        "deepcam", 0.82, "", {"opt_name": "LAMB", "opt_max_grad_norm": 0.0})
    assert division == "open" and reason == "opt_max_grad_norm=0.0 (v['value'] == 1.)"
    assert submission_division("cosmoflow", 0.124, "", {}, ["batch 4 has no RCP"]) == (
        "open", "batch 4 has no RCP")
    assert submission_division("gptj", 2.69)[0] == "open"
