"""The generate stage: the plan, per-class seeds, the rounds of candidates, the calibrated quality
gate, the copy rule, its failure modes, bad input, and sampling in one or two processes (DDP).

Stage tests use an untrained generator and judge (made here, instantly): the judge then gives every
class about the same probability, so a strict label check rejects everything; that is exactly what
the tests of the gate's failure modes need.
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_PARAMS, merge_dicts, run_cli, tiny_params, write_params
from pipeline import gate, nets
from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, ModelMeta, PreparedStats, SyntheticSummary
from pipeline.errors import ConfigError, GateError, InputError
from pipeline.image_rows import ImageRows
from pipeline.io import encode_png_tensor, read_manifest, sha256_file
from pipeline.manifests import load_split
from pipeline.metrics import closest_real_pair, copy_thresholds
from pipeline.nets import predict
from pipeline.paths import Paths
from pipeline.sampler import latents
from pipeline.stages import generate

NO_LABEL_CHECK = {"check_label": False}


def save_untrained_models(paths: Paths, image_size=None, class_names=None) -> None:
    """An untrained EMA generator and judge for the prepared data of `paths` (or for another image
    size / other classes, to test the checks)."""
    stats = PreparedStats.read(paths.prepared)
    image_size = image_size or stats.image_size
    class_names = class_names or stats.class_names
    torch.manual_seed(0)
    generator = nets.Generator(image_size, stats.channels, len(class_names), z_dim=16, width=8)
    nets.save_model(
        generator.eval(),
        paths.gan,
        "generator_ema",
        ModelMeta(image_size, stats.channels, class_names, width=8, z_dim=16),
    )
    save_untrained_judge(paths)


def save_untrained_judge(paths: Paths) -> None:
    """An untrained judge for the prepared data of `paths`."""
    stats = PreparedStats.read(paths.prepared)
    judge = nets.SmallCNN(stats.image_size, stats.channels, stats.num_classes, width=4)
    nets.save_model(
        judge.eval(), paths.judge, "judge", ModelMeta(stats.image_size, stats.channels, stats.class_names, width=4)
    )


def class_files(paths: Paths, folder: str) -> dict[str, str]:
    """sha256 of every synthetic PNG of a class folder, by file name."""
    return {p.name: sha256_file(p) for p in sorted((paths.synthetic / folder).glob("*.png"))}


def plan_of(paths: Paths) -> pd.DataFrame:
    return pd.read_csv(paths.synthetic / "plan.csv", dtype={"class_name": str}).set_index("class_name")


# --- pure functions ------------------------------------------------------------------------------


def test_plan_counts_for_each_kind_of_target():
    counts = [100, 40, 10, 0]
    assert generate.plan_counts(counts, "max", None) == [0, 60, 90, 100]
    assert generate.plan_counts(counts, 50, None) == [0, 10, 40, 50]  # classes at or above it get none
    assert generate.plan_counts(counts, 0.5, None) == [0, 10, 40, 50]  # a fraction of the largest class
    assert generate.plan_counts(counts, 1.0, None) == [0, 60, 90, 100]
    assert generate.plan_counts(counts, "max", 3) == [0, 60, 30, 0]  # at most 3 per real image


@pytest.mark.parametrize(
    "target, message",
    [
        (-1, "generate.target must be >= 0, got -1"),
        ("maximum", "generate.target must be max, an integer or a fraction in (0, 1], got 'maximum'"),
        (1.5, "generate.target as a fraction must be in (0, 1], got 1.5"),
    ],
)
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
    z = latents(seeds, 16, None)
    assert torch.equal(latents(seeds[50:60], 16, None), z[50:60])  # one image's latent needs only its seed
    assert z.abs().max() > 2.0
    truncated = latents(seeds, 16, 0.5)
    assert truncated.abs().max() <= 0.5 and truncated.std() > 0.2


def test_label_thresholds_let_the_chosen_share_of_real_images_pass_per_class():
    probability = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.99, 0.98])
    labels = np.array([0] * 5 + [1] * 6 + [2] * 2)
    thresholds = gate.label_thresholds(probability, labels, 3, pass_rate=0.8)
    assert thresholds[0] == pytest.approx(np.quantile([0.9, 0.8, 0.7, 0.6, 0.5], 0.2))
    assert np.mean(probability[labels == 0] >= thresholds[0]) == 0.8
    assert thresholds[1] == pytest.approx(0.3)  # a hard class gets a low bar, not one no real image meets
    assert thresholds[2] == pytest.approx(np.quantile(probability, 0.2))  # too few images: pooled


def test_gate_verdicts_record_every_reason_and_respect_switches():
    cfg = tiny_params().generate
    confidence = np.array([0.9, 0.2, 0.9, 0.2])
    distance = np.array([5.0, 5.0, 0.1, 0.1])
    accepted, reasons = gate.gate_verdicts(confidence, distance, cfg, label_threshold=0.5, copy_threshold=1.0)
    assert accepted.tolist() == [True, False, False, False]
    assert reasons.tolist() == ["", "low_confidence", "too_close", "low_confidence;too_close"]
    off = tiny_params(generate={"check_label": False, "check_memorisation": False}).generate
    assert gate.gate_verdicts(confidence, distance, off, 0.5, 1.0)[0].all()


def test_farthest_point_selection_spreads_out_away_from_the_anchors():
    candidates = np.array([[0.0], [0.1], [5.0], [5.1], [10.0]])
    distance_to_real = np.abs(candidates[:, 0] - 0.0)  # one real image at 0
    assert gate.farthest_point_selection(candidates, distance_to_real, 2).tolist() == [2, 4]
    assert gate.farthest_point_selection(candidates, distance_to_real, 3).tolist() == [1, 2, 4]
    assert gate.farthest_point_selection(candidates, distance_to_real, 9).tolist() == [0, 1, 2, 3, 4]


def test_keep_until_target_stops_at_the_last_needed_acceptance():
    accepted = np.array([False, True, True, False, True])
    assert gate.keep_until_target(accepted, 2) == 3
    assert gate.keep_until_target(accepted, 3) == 5
    assert gate.keep_until_target(accepted, 9) == 5


def test_select_passing_keeps_the_first_a_spread_or_the_least_sure_of_the_correctly_labelled():
    features = np.array([[0.0], [0.1], [5.0], [10.0]])
    distance, confidence = features[:, 0], np.array([0.9, 0.2, 0.5, 0.2])
    correct = np.array([True, True, True, True])
    assert gate.select_passing("first", 2, features, distance, confidence, correct).tolist() == [0, 1]
    assert gate.select_passing("first", 9, features, distance, confidence, correct).tolist() == [0, 1, 2, 3]
    assert gate.select_passing("diverse", 2, features, distance, confidence, correct).tolist() == [2, 3]
    assert gate.select_passing("informative", 2, features, distance, confidence, correct).tolist() == [1, 3]
    # a candidate the judge puts in another class is taken only when too few are labelled correctly,
    # and then the most sure of them first
    mislabelled = np.array([True, False, True, False])
    assert gate.select_passing("informative", 2, features, distance, confidence, mislabelled).tolist() == [0, 2]
    assert gate.select_passing("informative", 3, features, distance, confidence, mislabelled).tolist() == [0, 1, 2]


def test_a_class_draws_batches_that_follow_its_pass_rate_until_its_target_or_its_budget(tmp_path):
    def every_other(images):  # a gate that lets every other candidate pass
        return pd.DataFrame({"accepted": np.arange(len(images)) % 2 == 0}), np.zeros((len(images), 2))

    def none(images):
        return pd.DataFrame({"accepted": np.zeros(len(images), dtype=bool)}), np.zeros((len(images), 2))

    def batch_sizes(draws: gate.ClassDraws, gate_of_class) -> list[int]:
        sizes = []
        while len(seeds := draws.next_seeds()):
            assert seeds.tolist() == list(range(100 + draws.drawn, 100 + draws.drawn + len(seeds)))  # in order
            sizes.append(len(seeds))
            draws.take(seeds, torch.zeros(len(seeds), 1, 2, 2, dtype=torch.uint8), gate_of_class)
        return sizes

    seeds = np.arange(100, 118)  # 6 wanted x max_attempts 3
    cfg = tiny_params(generate={"batch_size": 10, "max_attempts": 3}).generate
    half = gate.ClassDraws(label=0, seeds=seeds, wanted=6, cfg=cfg, passing=ImageRows(tmp_path / "0.u8", 0, (2, 2, 1)))
    assert batch_sizes(half, every_other) == [6, 6]  # a pass rate of 1/2 after the first batch: twice what is left
    assert half.passed == 6 and sum(len(v) for v in half.verdicts) == 12
    assert (tmp_path / "0.u8").stat().st_size == 6 * 4  # the passing images went to the scratch file
    cfg = tiny_params(generate={"batch_size": 4, "max_attempts": 3}).generate
    failing = gate.ClassDraws(
        label=0, seeds=seeds, wanted=6, cfg=cfg, passing=ImageRows(tmp_path / "1.u8", 0, (2, 2, 1))
    )
    assert batch_sizes(failing, none) == [4, 4, 4, 4, 2]  # until the budget is spent
    assert failing.passed == 0 and failing.drawn == 18


@pytest.mark.parametrize("selection", ["first", "informative", "diverse"])
def test_write_class_writes_the_selected_passing_candidates_as_encoded_from_memory(tmp_path, selection):
    """The passing images (and, for `diverse`, features) make a round trip through scratch files: the
    PNGs and the manifest rows must be those of the same selection made on the candidates in memory."""
    rng = np.random.default_rng(0)
    count, planned, pool = 40, 4, 3
    images = torch.from_numpy(rng.integers(0, 256, size=(count, 3, 5, 4), dtype=np.uint8))  # C x H x W, not square
    accepted = rng.random(count) < 0.7
    confidence, distance = rng.random(count).round(6), (5 * rng.random(count)).round(6)
    prediction = np.where(rng.random(count) < 0.7, 0, 1)  # the judge puts some of class 0 in class 1
    features = rng.normal(size=(count, 8)).astype(np.float32)
    judged = []

    def gate_in_seed_order(batch):
        start, stop = len(judged), len(judged) + len(batch)
        judged.extend(range(start, stop))
        verdicts = pd.DataFrame(
            {
                "accepted": accepted[start:stop],
                "reject_reason": np.where(accepted[start:stop], "", "low_confidence"),
                "judge_confidence": confidence[start:stop],
                "judge_prediction": prediction[start:stop],
                "nn_distance": distance[start:stop],
                "nearest_real": "train/0/real.png",
            }
        )
        return verdicts, features[start:stop]

    wanted = planned * (1 if selection == "first" else pool)
    cfg = tiny_params(generate={"batch_size": 7, "selection": selection, "pool": pool}).generate
    draw = gate.ClassDraws(0, np.arange(count), wanted, cfg, passing=ImageRows(tmp_path / "0.u8", 0, (5, 4, 3)))
    while len(seeds := draw.next_seeds()):
        draw.take(seeds, images[seeds], gate_in_seed_order)
    passing = np.flatnonzero(accepted)[:wanted]
    expected = passing[
        gate.select_passing(
            selection, planned, features[passing], distance[passing], confidence[passing], prediction[passing] == 0
        )
    ]
    assert selection == "first" or expected.tolist() != passing[:planned].tolist()  # a selection that shows

    (tmp_path / "out").mkdir()
    plan_row = SimpleNamespace(label=0, planned=planned, class_name="zero", folder="zero")
    rows = generate.write_class(plan_row, draw, tmp_path / "out")
    written = sorted((tmp_path / "out" / "zero").glob("*.png"))
    assert [path.read_bytes() for path in written] == [encode_png_tensor(images[seed]) for seed in expected]
    assert rows["seed"].tolist() == list(range(len(rows))) and len(rows) > passing[-1]  # every candidate judged
    assert rows.loc[rows["accepted"], "seed"].tolist() == expected.tolist()
    assert rows.loc[rows["accepted"], "sha256"].tolist() == [sha256_file(path) for path in written]
    assert sorted(rows.loc[rows["reject_reason"] == "not_selected", "seed"]) == sorted(set(passing) - set(expected))
    draw.discard()
    assert list(tmp_path.glob("0.*")) == []  # the scratch files go once the class is written


# --- the stage -----------------------------------------------------------------------------------


def test_generate_balances_classes_and_records_verdicts(workspace):
    save_untrained_models(workspace)
    generate.run(tiny_params(generate=NO_LABEL_CHECK), workspace)
    stats = PreparedStats.read(workspace.prepared)
    plan = plan_of(workspace)
    real = [stats.counts["train"][name] for name in plan.index]
    assert (plan["real"] + plan["generated"]).tolist() == [max(real)] * len(real)
    assert plan["short"].eq(0).all()

    manifest = read_manifest(workspace.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    summary = SyntheticSummary.read(workspace.synthetic)
    assert (manifest["origin"] == "synthetic").all() and (manifest["source"] == summary.generator_hash).all()
    # the memorisation verdict follows the recorded distance and the class's copy threshold
    too_close = manifest["reject_reason"].str.contains("too_close")
    threshold = manifest["class_name"].map(summary.copy_thresholds)
    assert too_close.eq(manifest["nn_distance"] < threshold).all()
    # the nearest real image is a train image of the candidate's own class
    assert (manifest["nearest_real"].str.split("/").str[1] == manifest["class_name"]).all()
    accepted = manifest[manifest["accepted"]]
    assert accepted.groupby("class_name").size().to_dict() == plan["generated"][lambda s: s > 0].to_dict()
    for row in accepted.itertuples():
        assert sha256_file(workspace.synthetic / row.path) == row.sha256
    assert (manifest.loc[~manifest["accepted"], "path"] == "").all()  # rejected candidates keep no file


def test_diverse_selection_keeps_a_spread_out_subset_of_a_larger_passing_pool(workspace):
    save_untrained_models(workspace)
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20, "selection": "diverse", "pool": 3}), workspace)
    manifest = read_manifest(workspace.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    plan = plan_of(workspace)
    assert plan["short"].eq(0).all()
    for name, rows in manifest.groupby("class_name"):
        planned = plan.loc[name, "planned"]
        assert rows["accepted"].sum() == planned and (rows["reject_reason"] == "not_selected").sum() == 2 * planned
        # farthest-point sampling starts from the candidate farthest from the class's real images
        kept, passed_over = rows[rows["accepted"]], rows[rows["reject_reason"] == "not_selected"]
        assert kept["nn_distance"].max() >= passed_over["nn_distance"].max()


def test_informative_selection_keeps_the_correctly_labelled_candidates_the_judge_is_least_sure_of(workspace):
    save_untrained_models(workspace)  # an untrained judge labels some candidates as their class, others not
    generate.run(
        tiny_params(
            generate={
                "target": 20,
                "selection": "informative",
                "pool": 3,
                "label_pass_rate": 1.0,
                "check_memorisation": False,
            }
        ),
        workspace,
    )
    manifest = read_manifest(workspace.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    mixed_classes = 0
    for name, rows in manifest.groupby("class_name"):
        correct = rows["judge_prediction"] == rows["label"]
        kept, passed_over = rows["accepted"], rows["reject_reason"] == "not_selected"
        assert kept.sum() == plan_of(workspace).loc[name, "planned"] and passed_over.sum() == 2 * kept.sum()
        confidence = rows["judge_confidence"]
        if (kept & correct).any() and (passed_over & correct).any():  # the hard cases, not the easy ones
            assert confidence[kept & correct].max() <= confidence[passed_over & correct].min()
        if (kept & ~correct).any():  # another class's look only when too few are labelled as the class
            assert not (passed_over & correct).any()
            mixed_classes += 1
            if (passed_over & ~correct).any():  # and then the most sure of them
                assert confidence[kept & ~correct].min() >= confidence[passed_over & ~correct].max()
    assert 0 < mixed_classes < manifest["class_name"].nunique()  # both cases occur in this data


def test_the_copy_rule_is_the_closest_pair_of_distinct_real_images_of_the_class(workspace):
    save_untrained_models(workspace)
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20}), workspace)
    stats = PreparedStats.read(workspace.prepared)
    judge, _ = nets.load_judge(workspace.judge)
    train, val = load_split(workspace.prepared, stats, "train"), load_split(workspace.prepared, stats, "val")
    train_features, val_features = predict(judge, train[0])[1], predict(judge, val[0])[1]
    summary = SyntheticSummary.read(workspace.synthetic)
    expected = copy_thresholds(train_features, train[1], val_features, val[1], stats.num_classes)
    assert list(summary.copy_thresholds.values()) == pytest.approx(expected, abs=1e-6)
    for label, name in enumerate(stats.class_names):  # the tiny classes have enough images for their own pair
        own = closest_real_pair(train_features[train[1] == label], val_features[val[1] == label])
        assert summary.copy_thresholds[name] == pytest.approx(own, abs=1e-6)


def test_a_copy_of_a_training_image_never_passes_the_gate(workspace, monkeypatch):
    """A 'generator' that returns training images: every candidate is a copy, so none may pass."""
    save_untrained_models(workspace)
    stats = PreparedStats.read(workspace.prepared)
    train_images, train_labels = load_split(workspace.prepared, stats, "train")

    class CopyingGenerator(nets.Generator):
        def forward(self, z, y, conditioning=1.0):
            picks = torch.stack(
                [
                    torch.nonzero(train_labels == label)[i % int((train_labels == label).sum())][0]
                    for i, label in enumerate(y.tolist())
                ]
            )
            return nets.to_unit_range(train_images[picks])

    monkeypatch.setattr(nets.generators, "Generator", CopyingGenerator)  # what build_generator makes for resnet
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20, "max_attempts": 1}), workspace)
    manifest = read_manifest(workspace.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    assert len(manifest) > 0 and not manifest["accepted"].any()
    assert (manifest["reject_reason"] == "too_close").all() and (manifest["nn_distance"] == 0).all()


def test_changing_one_class_count_leaves_other_classes_unchanged_and_runs_are_byte_identical(workspace):
    save_untrained_models(workspace)
    to_40 = {**NO_LABEL_CHECK, "target": 40}
    generate.run(tiny_params(generate=to_40), workspace)
    before = {folder: class_files(workspace, folder) for folder in ("5", "8", "9")}
    manifest_bytes = sha256_file(workspace.synthetic / "manifest.csv")
    generate.run(tiny_params(generate=to_40), workspace)
    assert sha256_file(workspace.synthetic / "manifest.csv") == manifest_bytes
    assert {folder: class_files(workspace, folder) for folder in before} == before

    # tiny train counts: class 9 has 12 images and needs 28, class 8 has 16 and needs 24, so a cap
    # of 2 synthetic images per real image changes class 9 only
    generate.run(tiny_params(generate={**to_40, "max_synthetic_per_real": 2}), workspace)
    plan = plan_of(workspace)
    assert plan.loc["9", "generated"] == 24 and plan.loc["8", "generated"] == 24
    assert class_files(workspace, "5") == before["5"] and class_files(workspace, "8") == before["8"]
    after = class_files(workspace, "9")
    assert len(after) == 24 and after == {name: before["9"][name] for name in after}


def test_truncation_changes_the_images(workspace):
    save_untrained_models(workspace)
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20}), workspace)
    plain = class_files(workspace, "9")
    generate.run(tiny_params(generate={**NO_LABEL_CHECK, "target": 20, "truncation": 0.5}), workspace)
    truncated = class_files(workspace, "9")
    assert len(truncated) == len(plain) == 8 and set(truncated.values()).isdisjoint(plain.values())


# pass rate 0.05: a candidate must be surer than 95 % of the real val images of its class, which an
# untrained generator's candidates rarely are
STRICT_GATE = {"label_pass_rate": 0.05, "max_attempts": 2, "target": 20, "check_memorisation": False}


def test_with_on_short_fail_a_short_class_stops_the_stage_naming_itself_and_its_acceptance_rate(workspace):
    save_untrained_models(workspace)
    with pytest.raises(
        GateError,
        match=r"class '\d': \d+ of \d+ images passed the gate after \d+ candidates "
        r"\(acceptance rate \d+\.\d%.*or set generate.on_short: fill$",
    ):
        generate.run(tiny_params(generate={**STRICT_GATE, "on_short": "fail"}), workspace)
    assert not workspace.synthetic.exists()  # nothing published


def test_with_on_short_fill_a_short_class_keeps_what_passed_and_says_so(workspace, capsys):
    save_untrained_models(workspace)
    generate.run(tiny_params(generate=STRICT_GATE), workspace)  # on_short: fill, the default
    plan = plan_of(workspace)
    short = plan[plan["short"] > 0]
    assert len(short) > 0 and (plan["candidates"] == 2 * plan["planned"]).all()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("generate: warning:")]
    assert [line.split("'")[1] for line in warnings] == short.index.tolist()  # one line per short class
    assert all(
        line.endswith("its real images fill the rest of the class (generate.on_short: fill)") for line in warnings
    )
    summary = SyntheticSummary.read(workspace.synthetic)
    assert summary.short_classes == {
        name: {"passed": int(row.generated), "planned": int(row.planned)} for name, row in short.iterrows()
    }
    assert summary.planned == plan["planned"].to_dict() and summary.short == short["short"].sum()
    manifest = read_manifest(workspace.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    assert len(manifest) == plan["candidates"].sum()
    rejected = manifest[~manifest["accepted"]]
    assert (rejected["reject_reason"] == "low_confidence").all()
    thresholds = rejected["class_name"].map(plan["label_threshold"])
    assert (rejected["judge_confidence"] < thresholds + 1e-6).all()


def test_generator_for_other_data_is_rejected(workspace):
    save_untrained_models(workspace, image_size=32)
    with pytest.raises(
        InputError,
        match=r"generator_ema.json: made for 32x32 images with 1 channel\(s\), but "
        r"data/prepared holds 16x16",
    ):
        generate.run(tiny_params(), workspace)
    save_untrained_models(workspace, class_names=[str(i) for i in range(9)])
    with pytest.raises(InputError, match=r"generator_ema.json: made for other classes .*classes it lacks: \['9'\]"):
        generate.run(tiny_params(), workspace)


def test_cli_errors_are_one_line_naming_the_culprit(workspace):
    write_params(workspace.root, TINY_PARAMS)
    missing = run_cli("generate", cwd=workspace.root)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "models/gan/generator_ema.pt: not found" in missing.stderr

    write_params(workspace.root, {**TINY_PARAMS, "generate": {"target": "most"}})
    bad_target = run_cli("generate", cwd=workspace.root)
    assert bad_target.returncode == 2 and "generate.target must be max" in bad_target.stderr


def test_one_and_two_cpu_processes_write_byte_identical_files(workspace, monkeypatch):
    """generate.devices 2 runs DDP on two CPU processes (as tests/test_train.py's DDP test does)."""
    save_untrained_models(workspace)
    # Each batch goes through the generator whole in one process, but the CPU kernels PyTorch picks also
    # depend on the threads per process (Lightning gives each of two processes half the cores): both
    # runs get one thread per process.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    written = {}
    for devices in (1, 2):
        write_params(
            workspace.root,
            merge_dicts(
                TINY_PARAMS,
                {
                    "generate": {
                        **NO_LABEL_CHECK,
                        "target": 40,
                        "batch_size": 8,
                        "selection": "diverse",
                        "pool": 2,
                        "accelerator": "cpu",
                        "devices": devices,
                    }
                },
            ),
        )
        result = run_cli("generate", cwd=workspace.root)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("MEMBER: 2/2" in result.stdout + result.stderr) == (devices == 2)  # Lightning started DDP
        written[devices] = {
            path.relative_to(workspace.synthetic).as_posix(): path.read_bytes()
            for path in sorted(workspace.synthetic.rglob("*"))
            if path.is_file()
        }
    assert len(written[1]) == 92 + 3  # the images of the plan, manifest.csv, plan.csv, summary.json
    assert [name for name in written[1] if written[1][name] != written[2].get(name)] == []
    assert written[1].keys() == written[2].keys()
