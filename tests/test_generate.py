"""The generate stage: the plan, per-class seeds, the quality gate, its failure modes and bad input.

Stage tests use an untrained generator and judge (made here, instantly): the judge then gives every
class about the same probability, so the label check rejects everything unless it is switched off;
that is exactly what the tests of the gate's failure modes need.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_PARAMS, run_cli, tiny_params, write_params
from sklearn.neighbors import NearestNeighbors

from pipeline import generate, nets
from pipeline.config import ConfigError
from pipeline.io import read_json, read_manifest, sha256_file

NO_LABEL_CHECK = {"check_label": False}


def save_untrained_models(image_size=None, class_names=None) -> None:
    """An untrained EMA generator and judge for the prepared data in the working directory (or for
    another image size / other classes, to test the checks)."""
    stats = read_json("data/prepared/stats.json")
    image_size = image_size or stats["image_size"]
    class_names = class_names or [c["class_name"] for c in stats["classes"]]
    torch.manual_seed(0)
    generator = nets.Generator(image_size, stats["channels"], len(class_names), z_dim=16, width=8)
    meta = {"image_size": image_size, "channels": stats["channels"], "class_names": class_names}
    nets.save_model(generator.eval(), nets.GAN_DIR, "generator_ema", {**meta, "z_dim": 16, "width": 8})
    judge = nets.Classifier(stats["image_size"], stats["channels"], len(stats["classes"]), width=4)
    nets.save_model(judge.eval(), nets.JUDGE_DIR, "judge", {
        **meta, "image_size": stats["image_size"], "class_names": [c["class_name"] for c in stats["classes"]], "width": 4,
    })


def class_files(folder: str) -> dict[str, str]:
    """sha256 of every synthetic PNG of a class folder, by file name."""
    return {p.name: sha256_file(p) for p in sorted((generate.SYNTHETIC_DIR / folder).glob("*.png"))}


# --- pure functions ------------------------------------------------------------------------------


def test_plan_counts_for_each_kind_of_target():
    counts = [100, 40, 10, 0]
    assert generate.plan_counts(counts, "max", None) == [0, 60, 90, 100]
    assert generate.plan_counts(counts, 50, None) == [0, 10, 40, 50]  # classes at or above it get none
    assert generate.plan_counts(counts, 0.5, None) == [0, 10, 40, 50]  # a fraction of the largest class
    assert generate.plan_counts(counts, 1.0, None) == [0, 60, 90, 100]
    assert generate.plan_counts(counts, "max", 3) == [0, 60, 30, 0]  # at most 3 per real image


@pytest.mark.parametrize("target, message", [
    (-1, "generate.target must be >= 0, got -1"),
    ("maximum", "generate.target must be max, an integer or a fraction in (0, 1], got 'maximum'"),
    (1.5, "generate.target as a fraction must be in (0, 1], got 1.5"),
])
def test_bad_targets_are_config_errors(target, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_params(generate={"target": target})


def test_candidate_seeds_are_a_stream_per_class():
    first = generate.candidate_seeds(0, 3, 10)
    assert np.array_equal(generate.candidate_seeds(0, 3, 25)[:10], first)  # more candidates: same prefix
    assert not np.array_equal(generate.candidate_seeds(0, 4, 10), first)
    assert not np.array_equal(generate.candidate_seeds(1, 3, 10), first)


def test_latents_are_seeded_per_image_and_truncation_bounds_them():
    seeds = generate.candidate_seeds(0, 0, 200)
    z = generate.latents(seeds, 16, None)
    assert torch.equal(generate.latents(seeds[50:60], 16, None), z[50:60])  # one image's latent needs only its seed
    assert z.abs().max() > 2.0
    truncated = generate.latents(seeds, 16, 0.5)
    assert truncated.abs().max() <= 0.5 and truncated.std() > 0.2


def test_memorisation_threshold_is_a_quantile_of_real_nearest_neighbour_distances():
    real = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])  # nearest-neighbour distances 1, 1, 2, 3, 4
    index = NearestNeighbors(n_neighbors=1).fit(real)
    assert generate.memorisation_threshold(index, 0.5) == 2.0
    assert generate.memorisation_threshold(index, 0.25) == 1.0


def test_gate_verdicts_record_every_reason_and_respect_switches():
    cfg = tiny_params(generate={"min_confidence": 0.5}).generate
    confidence = np.array([0.9, 0.2, 0.9, 0.2])
    distance = np.array([5.0, 5.0, 0.1, 0.1])
    accepted, reasons = generate.gate_verdicts(confidence, distance, cfg, threshold=1.0)
    assert accepted.tolist() == [True, False, False, False]
    assert reasons.tolist() == ["", "low_confidence", "too_close", "low_confidence;too_close"]
    off = tiny_params(generate={"check_label": False, "check_memorisation": False}).generate
    assert generate.gate_verdicts(confidence, distance, off, threshold=1.0)[0].all()


def test_keep_until_target_stops_at_the_last_needed_acceptance():
    accepted = np.array([False, True, True, False, True])
    assert generate.keep_until_target(accepted, 2) == 3
    assert generate.keep_until_target(accepted, 3) == 5
    assert generate.keep_until_target(accepted, 9) == 5


# --- the stage -----------------------------------------------------------------------------------


def test_generate_balances_classes_and_records_verdicts(workspace):
    save_untrained_models()
    generate.run(tiny_params(generate=NO_LABEL_CHECK))
    stats = read_json("data/prepared/stats.json")
    plan = pd.read_csv("data/synthetic/plan.csv", dtype={"class_name": str})
    real = [stats["counts"]["train"][name] for name in plan["class_name"]]
    assert (plan["real"] + plan["generated"]).tolist() == [max(real)] * len(real)
    assert plan["short"].eq(0).all()

    manifest = read_manifest("data/synthetic/manifest.csv")
    summary = read_json("data/synthetic/summary.json")
    assert set(generate.GATE_COLUMNS) <= set(manifest.columns)
    assert (manifest["origin"] == "synthetic").all() and (manifest["source"] == summary["generator_hash"]).all()
    # the memorisation verdict follows the recorded distance and threshold
    too_close = manifest["reject_reason"].str.contains("too_close")
    assert too_close.eq(manifest["nn_distance"] < summary["memorisation_threshold"]).all()
    assert manifest["nearest_real"].str.startswith("train/").all()
    accepted = manifest[manifest["accepted"]]
    assert accepted.groupby("class_name").size().to_dict() == plan.set_index("class_name")["generated"][lambda s: s > 0].to_dict()
    for row in accepted.itertuples():
        assert sha256_file(f"data/synthetic/{row.path}") == row.sha256
    assert (manifest.loc[~manifest["accepted"], "path"] == "").all()  # rejected candidates keep no file


def test_changing_one_class_count_leaves_other_classes_unchanged_and_runs_are_byte_identical(workspace):
    save_untrained_models()
    to_40 = {**NO_LABEL_CHECK, "target": 40}
    generate.run(tiny_params(generate=to_40))
    before = {folder: class_files(folder) for folder in ("5", "8", "9")}
    manifest_bytes = sha256_file("data/synthetic/manifest.csv")
    generate.run(tiny_params(generate=to_40))
    assert sha256_file("data/synthetic/manifest.csv") == manifest_bytes
    assert {folder: class_files(folder) for folder in before} == before

    # tiny train counts: class 9 has 12 images and needs 28, class 8 has 16 and needs 24, so a cap
    # of 2 synthetic images per real image changes class 9 only
    generate.run(tiny_params(generate={**to_40, "max_synthetic_per_real": 2}))
    plan = pd.read_csv("data/synthetic/plan.csv", dtype={"class_name": str}).set_index("class_name")
    assert plan.loc["9", "generated"] == 24 and plan.loc["8", "generated"] == 24
    assert class_files("5") == before["5"] and class_files("8") == before["8"]
    after = class_files("9")
    assert len(after) == 24 and after == {name: before["9"][name] for name in after}


def test_truncation_changes_the_images(workspace):
    save_untrained_models()
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20}))
    plain = class_files("9")
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20, "truncation": 0.5}))
    truncated = class_files("9")
    assert len(truncated) == len(plain) == 8 and set(truncated.values()).isdisjoint(plain.values())


def test_a_class_that_fails_the_gate_names_itself_and_its_acceptance_rate(workspace):
    save_untrained_models()  # an untrained judge is never 90% sure of anything
    strict = {"min_confidence": 0.9, "max_attempts": 2, "target": 20}
    with pytest.raises(ConfigError, match=r"class '8': 0 of 4 images passed the gate after 8 candidates "
                                          r"\(acceptance rate 0.0%.*generate.allow_short"):
        generate.run(tiny_params(generate=strict))

    generate.run(tiny_params(generate={**strict, "allow_short": True}))
    plan = pd.read_csv("data/synthetic/plan.csv", dtype={"class_name": str}).set_index("class_name")
    assert plan.loc["9", "short"] == 8 and plan.loc["9", "candidates"] == 16 and plan.loc["9", "acceptance_rate"] == 0
    manifest = read_manifest("data/synthetic/manifest.csv")
    assert len(manifest) == plan["candidates"].sum() and not manifest["accepted"].any()
    assert manifest["reject_reason"].str.startswith("low_confidence").all()


def test_generator_for_other_data_is_rejected(workspace):
    save_untrained_models(image_size=32)
    with pytest.raises(ConfigError, match=r"generator_ema.json: made for 32x32 images with 1 channel\(s\), but "
                                          r"data/prepared holds 16x16"):
        generate.run(tiny_params())
    save_untrained_models(class_names=[str(i) for i in range(9)])
    with pytest.raises(ConfigError, match=r"generator_ema.json: trained for other classes .*classes it lacks: \['9'\]"):
        generate.run(tiny_params())


def test_cli_errors_are_one_line_naming_the_culprit(workspace):
    write_params(workspace, TINY_PARAMS)
    missing = run_cli("generate", cwd=workspace)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "models/gan/generator_ema.pt: not found" in missing.stderr

    write_params(workspace, {**TINY_PARAMS, "generate": {"target": "most"}})
    bad_target = run_cli("generate", cwd=workspace)
    assert bad_target.returncode == 2 and "generate.target must be max" in bad_target.stderr
