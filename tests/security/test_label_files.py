"""A labels CSV is safe to open in a spreadsheet (issue 24, item 5): a label that starts like a formula is
written escaped, and comes back as it was."""

import csv

import saekit as sk

from planted import planted_analysis

FORMULAS = ["=cmd|' /C calc'!A0", "@SUM(1+1)", "+1+1", "-2+3", "'quoted", "plain text"]


def test_formula_labels_are_escaped_in_csv_and_round_trip(ws, tmp_path, tiny_model_dir, docs_file):
    feats, _ = planted_analysis(ws, tiny_model_dir, docs_file)
    feats.set_labels({i: text for i, text in enumerate(FORMULAS)})
    path = feats.export_labels(tmp_path / "labels.csv")
    cells = [cell for row in csv.reader(path.open()) for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)  # nothing a spreadsheet would run
    assert "'=cmd|' /C calc'!A0" in cells and "''quoted" in cells and "plain text" in cells
    other = sk.analyze(feats.sae(), sk.activation_stores()[0], background=False, progress=False, force=True).result()
    assert other.import_labels(path) == len(FORMULAS)
    assert [other[i].label for i in range(len(FORMULAS))] == FORMULAS
