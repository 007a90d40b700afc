"""`mhtag audit` on the synthetic demo data with labels flipped on purpose."""

import json
import random
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mhtag import cli
from mhtag.audit.labels import AuditOptions, audit_labels, export_suspects
from mhtag.audit.rules import rule_breaks
from mhtag.core.errors import MhtagError
from mhtag.data.schema import LabelSchema
from mhtag.inference.fusion import TAU_GRID
from mhtag.training.crossfit import fold_of, out_of_fold_probabilities

COLOURS = ["red", "green", "blue", "yellow"]


def _flip(csv, n, seed=0):
    lines = csv.read_text().splitlines()
    col = lines[0].split(",").index("colour")
    rng, flipped = random.Random(seed), set()
    for i in rng.sample(range(1, len(lines)), n):
        parts = lines[i].split(",")
        parts[col] = rng.choice([c for c in COLOURS if c != parts[col]])
        lines[i] = ",".join(parts)
        flipped.add(parts[0])
    csv.write_text("\n".join(lines) + "\n")
    return flipped


def test_the_audit_finds_flipped_labels(demo_copy):
    flipped = _flip(demo_copy, 8)
    result = audit_labels(demo_copy, backbone="tiny_cnn", options=AuditOptions(attributes=["colour"], epochs=30))
    from sklearn.metrics import roc_auc_score

    colour = [s for s in result.suspects if s.attribute == "colour"]
    auc = roc_auc_score([s.path in flipped for s in colour], [s.score for s in colour])
    top = {s.path for s in colour[:8]}
    assert auc >= 0.85 and len(top & flipped) >= 4, (auc, top, flipped)  # chance: AUC 0.5, 0.5 of 8 in the top 8
    s = result.suspects[0]
    assert s.given != s.suggested and s.neighbour_paths and 0 <= s.score <= 1
    assert result.summary["vote_tau"]["colour"] in TAU_GRID  # tuned on the out-of-fold votes
    assert [x.score for x in result.suspects] == sorted((x.score for x in result.suspects), reverse=True)


def test_out_of_fold_means_a_row_never_judges_itself():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    import pandas as pd

    schema = LabelSchema.fit(pd.DataFrame({"c": [str(v) for v in y]}), ["c"], set())[0]
    targets = {"c": y.astype(np.int64)}
    fold = fold_of(60, 5)
    before = out_of_fold_probabilities(x, targets, schema, fold, epochs=5)["c"]
    changed = {"c": targets["c"].copy()}
    changed["c"][7] = (changed["c"][7] + 1) % 3  # row 7's own label changes...
    after = out_of_fold_probabilities(x, changed, schema, fold, epochs=5)["c"]
    assert np.array_equal(before[fold == fold[7]], after[fold == fold[7]])  # ...its fold's scores do not
    assert not np.array_equal(before[fold != fold[7]], after[fold != fold[7]])  # (the others' models saw it)


def test_duplicates_across_splits_and_with_conflicting_labels(demo_copy):
    images = demo_copy.parent / "images"
    shutil.copy(images / "00003.png", images / "copy.png")
    lines = demo_copy.read_text().splitlines()
    row = next(x for x in lines if x.startswith("images/00003.png")).split(",")
    split = "test" if row[-1] != "test" else "train"
    row[0], row[-1] = "images/copy.png", split
    col = lines[0].split(",").index("colour")
    row[col] = next(c for c in COLOURS if c != row[col])
    demo_copy.write_text("\n".join(lines + [",".join(row)]) + "\n")
    # the untrained test backbone sees many demo images as alike: only exact copies count here
    result = audit_labels(demo_copy, backbone="tiny_cnn",
                          options=AuditOptions(attributes=["colour"], epochs=5, near=0.99999))
    group = next(g for g in result.duplicates if "images/copy.png" in g.paths)
    assert group.kind == "identical" and set(group.paths) == {"images/00003.png", "images/copy.png"}
    assert group.crosses_splits and group.conflicting == ["colour"]
    assert result.duplicates[0] == group or result.duplicates[0].conflicting  # conflicting groups come first


def test_audit_cli_json_html_export_and_bad_input(demo_copy, tmp_path):
    _flip(demo_copy, 4)
    runner = CliRunner()
    r = runner.invoke(cli.app, ["audit", "--labels", str(demo_copy), "--backbone", "tiny_cnn", "--attribute", "colour",
                                "--json", "--html", str(tmp_path / "a.html"),
                                "--export", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) == {"suspects", "duplicates", "summary", "rule_breaks"}
    assert out["suspects"][0]["attribute"] == "colour" and out["rule_breaks"] == []  # one attribute: no rule
    assert set(out["summary"]["vote_tau"]) == {"colour"}  # tuned for the attribute audited
    assert {"path", "attribute", "given", "suggested", "score"} <= set(out["suspects"][0])
    page = (tmp_path / "a.html").read_text()
    assert "data:image/jpeg;base64," in page and "suggested" in page
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header == "path,row,attribute,given,suggested,score,flagged,source,fix"
    with pytest.raises(MhtagError, match="does not exist"):
        audit_labels(tmp_path / "missing.csv", backbone="tiny_cnn")
    with pytest.raises(MhtagError, match="unknown attribute"):
        audit_labels(demo_copy, backbone="tiny_cnn", options=AuditOptions(attributes=["nope"]))


def test_an_edited_export_feeds_back_into_the_labels(demo_copy, tmp_path):
    flipped = _flip(demo_copy, 4)
    result = audit_labels(demo_copy, backbone="tiny_cnn",
                          options=AuditOptions(attributes=["colour"], epochs=5, vote_tau=0.3))
    assert result.summary["vote_tau"] == {"colour": 0.3}  # a temperature given is kept
    export_suspects(result, tmp_path / "s.csv")
    edited = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    edited.loc[edited["path"].isin(flipped), "fix"] = "red"
    edited.to_csv(tmp_path / "s.csv", index=False)
    r = CliRunner().invoke(cli.app, ["apply-fixes", "--labels", str(demo_copy), "--fixes", str(tmp_path / "s.csv"),
                                     "--out", str(tmp_path / "fixed.csv")])
    assert r.exit_code == 0 and "4 label(s) fixed" in r.output
    fixed = pd.read_csv(tmp_path / "fixed.csv", dtype=str)
    assert set(fixed.loc[fixed["path"].isin(flipped), "colour"]) == {"red"}
    assert len(fixed) == len(pd.read_csv(demo_copy))


def test_the_audit_can_embed_with_a_trained_runs_backbone(demo_copy, tiny_run):
    result = audit_labels(demo_copy, model=tiny_run,
                          options=AuditOptions(attributes=["colour", "marks"], epochs=3, folds=3))
    kinds = {s.attribute: isinstance(s.given, list) for s in result.suspects}
    assert kinds == {"colour": False, "marks": True}  # the run's tag group is read as tags


def _catalogue(n_per_type=60):
    """type determines group (a hierarchy); colour is independent of both."""
    groups = {"sandal": "shoes", "boot": "shoes", "tie": "accessories", "belt": "accessories", "rare": "misc"}
    rows = []
    for t, g in groups.items():
        for i in range(n_per_type if t != "rare" else 3):
            rows.append({"path": f"images/{t}{i}.png", "type": t, "group": g,
                         "colour": ["red", "blue", "black"][i % 3], "split": "train", "__row__": len(rows) + 2})
    return pd.DataFrame(rows)


def test_a_label_against_the_hierarchy_the_others_follow_is_found():
    frame = _catalogue()
    frame.loc[3, "group"] = "accessories"  # a sandal filed under accessories
    frame.loc[60 * 4 + 1, "group"] = "shoes"  # a "rare" row: 3 rows are too few for a rule
    breaks = rule_breaks(frame, ["type", "group", "colour"])
    assert [(b.path, b.attribute, b.given, b.expected) for b in breaks] == [
        ("images/sandal3.png", "group", "accessories", "shoes")]
    b = breaks[0]
    assert b.rule == "type=sandal -> group=shoes" and (b.support, b.rows, b.row) == (59, 60, 5)
    assert rule_breaks(_catalogue(), ["type", "group", "colour"]) == []  # nothing broken, nothing found


def test_no_rule_where_one_attribute_does_not_determine_the_other():
    frame = _catalogue()
    frame.loc[[*range(10), *range(60, 70)], "group"] = "accessories"  # a sixth of sandals and boots
    assert rule_breaks(frame, ["type", "group"]) == []  # only ties and belts (49% of rows) follow a rule
    assert len(rule_breaks(frame, ["type", "group"], min_share=0.8, min_covered=0.9)) == 20
    assert rule_breaks(frame, ["type", "colour"]) == []  # colour varies within every type


def test_the_audit_reports_exports_and_fixes_a_hierarchy_break(demo_copy, tmp_path):
    frame = pd.read_csv(demo_copy, dtype=str, keep_default_na=False)
    frame["family"] = frame["shape"].map({"circle": "round", "square": "angular", "triangle": "angular"})
    frame.loc[5, "family"] = "angular" if frame.loc[5, "shape"] == "circle" else "round"
    frame.to_csv(demo_copy, index=False)
    r = CliRunner().invoke(cli.app, ["audit", "--labels", str(demo_copy), "--backbone", "tiny_cnn", "--attribute",
                                     "shape", "--attribute", "family", "--export", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    assert "labels against a rule the other rows follow: 1" in r.output and frame.loc[5, "path"] in r.output
    export = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    rule_row = export[export["source"].str.startswith("rule: shape=")]
    assert len(rule_row) == 1 and rule_row["path"].iat[0] == frame.loc[5, "path"]
    export.loc[rule_row.index, "fix"] = rule_row["suggested"]
    export.to_csv(tmp_path / "s.csv", index=False)
    r = CliRunner().invoke(cli.app, ["apply-fixes", "--labels", str(demo_copy), "--fixes", str(tmp_path / "s.csv"),
                                     "--out", str(tmp_path / "fixed.csv")])
    assert r.exit_code == 0 and "1 label(s) fixed" in r.output
    fixed = pd.read_csv(tmp_path / "fixed.csv", dtype=str, keep_default_na=False)
    assert rule_breaks(fixed.assign(__row__=range(2, len(fixed) + 2)), ["shape", "family"]) == []
