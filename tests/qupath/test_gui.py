"""The extension in QuPath's real GUI (Xvfb + openbox), one session per QuPath version: the
menu, the server settings and model dialogs, Segment selected annotations, Edit > Undo / Redo,
the workflow's one-liner run as a script, and Compare on a one-model server
(gui_driver.groovy does what a user does and reports what QuPath showed).

The screenshots go to $ROISEG_SCREENSHOTS/VERSION when that is set (docs/qupath/ holds a set)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from real_qupath import CMU, HERE, install_profile, versions

PRECISION_WARNING = "does not match default precision model"


@pytest.fixture(scope="module", params=versions(), ids=[f"qupath-{v}" for v in versions()])
def session(request, extension_jar, server_port, display, tmp_path_factory) -> dict:
    """One GUI session of the driver: its report, QuPath's log and the screenshot folder."""
    directory = tmp_path_factory.mktemp(f"gui-{request.param}")
    qupath = install_profile(request.param, extension_jar, directory)
    out = directory / "out"
    result = qupath.run(["-q", "-i", str(CMU)], timeout=420,
                        java_options=(f"-Dqupath.startup.script={HERE / 'gui_driver.groovy'}",
                                      f"-Droiseg.test.out={out}", f"-Droiseg.test.port={server_port}"),
                        env={"DISPLAY": display})
    report_file = out / "report.json"
    assert report_file.is_file(), f"the driver wrote no report; QuPath's output:\n{result.stdout[-6000:]}"
    report = json.loads(report_file.read_text())
    assert "error" not in report, f"the driver failed: {report['error']}\n{result.stdout[-4000:]}"
    target = os.environ.get("ROISEG_SCREENSHOTS")
    if target:
        copy = Path(target) / request.param
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.json"))
    return {"report": report, "log": result.stdout, "out": out, "version": request.param}


def step(session: dict, name: str) -> None:
    """Asserts that the driver's step passed, with what it saw."""
    result = session["report"]["steps"].get(name)
    assert result is not None, (f"QuPath {session['version']}: step {name} did not run; the driver's "
                                f"errors: {session['report']['errors']}")
    assert result["ok"], f"QuPath {session['version']}: {name}: {result['detail']}"


def test_menu_lists_the_commands(session):
    assert session["report"].get("menu") == ["Segment selected annotations", "Segment all annotations in image",
                                         "Compare models on selection", "Show where the model is unsure", None,
                                         "Submit corrections",
                                         "Fine-tune model\u2026", None, "Choose model\u2026",
                                         "Server settings\u2026"]
    assert "menu.png" in session["report"]["screenshots"]


def test_segment_adds_results_and_keeps_the_users_objects(session):
    step(session, "run_adds_results")
    step(session, "run_keeps_user_objects")


def test_one_undo_restores_exactly_the_hierarchy_before_the_run(session):
    step(session, "undo_restores_before_run")
    step(session, "redo_restores_run")


def test_rerun_replaces_only_roisegs_objects_and_undoes_in_one_step(session):
    step(session, "rerun_keeps_user_object")
    step(session, "rerun_replaces_results")
    step(session, "undo_restores_before_rerun")


def test_workflow_one_liner_lists_classes_and_undoes_in_one_step(session):
    step(session, "script_adds_results")
    step(session, "script_lists_classes")
    step(session, "script_undo_restores")


def test_user_classes_are_never_recoloured(session):
    step(session, "no_class_recoloured")


def test_server_settings_show_every_text_whole(session):
    step(session, "settings_not_truncated")
    step(session, "settings_fit_the_screen")


def test_model_dialog_shows_what_a_pathologist_needs_and_fits_the_screen(session):
    dialog = session["report"].get("modelDialog")
    assert dialog, f"the model dialog was not seen: {session['report']['errors']}"
    shown = " | ".join(dialog["shown"])
    assert dialog["height"] <= 0.8 * dialog["screenHeight"], dialog
    assert dialog["truncated"] == [], dialog
    assert not dialog["listScrollsSide"], "the model list needs a horizontal scroll bar"
    assert "GlaS glands (UNet / MobileNetV2, ensemble of 2)" in shown
    assert "Version 0.4.0" in shown and "1 \u00b5m/px" in shown
    assert "Gland epithelium" in shown and "Classes" in shown
    assert "More about this model" in shown
    # the training command line and its temporary paths are there on demand only
    assert "--max-minutes" not in shown and "Trained on" not in shown and "/tmp/" not in shown


def test_compare_on_a_one_model_server_says_so_without_a_dialog(session):
    step(session, "compare_one_model_no_dialog")


def test_confidence_overlay_shows_and_toggles_from_the_menu(session):
    step(session, "confidence_overlay_shown")
    step(session, "confidence_overlay_toggles")
    assert "confidence.png" in session["report"]["screenshots"]


def test_submit_corrections_and_fine_tune_through_the_menu(session):
    step(session, "corrections_stored")
    step(session, "corrections_keep_hierarchy")
    step(session, "correction_effort_shown")
    step(session, "fine_tune_version_offered")


def test_results_are_built_in_qupaths_precision_model(session):
    assert PRECISION_WARNING not in session["log"]
