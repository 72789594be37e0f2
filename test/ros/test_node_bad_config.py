"""Bad node configuration is reported, never silently ignored (issue #14): typo'd parameter
names, unknown vocabularies, broken params files; and the set_vocabulary file allow-list."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("rclpy")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402

from ovsam_ros.ros.param_checks import (ParamsFileError, check_params_file, read_params_file,  # noqa: E402
                                        section_applies, unknown_parameters)
from ovsam_ros.ros.parameters import SPECS  # noqa: E402


# ----------------------------------------------------------------------------- parameter names
def test_unknown_parameter_names_get_the_closest_valid_name():
    found = unknown_parameters(["mdoe", "top_k", "qos_overrides./x.publisher.depth", "zzzzzz"], SPECS)
    assert set(found) == {"mdoe", "zzzzzz"}
    assert "did you mean 'mode'?" in found["mdoe"]
    assert "valid names:" in found["zzzzzz"] and "points_per_side" in found["zzzzzz"]


def test_a_typoed_parameter_stops_configure_with_the_closest_name(make_node):
    # Before: 'mdoe: everything' started the node in mode 'prompt' without a word.
    node = make_node(active=False, mdoe="everything")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "unknown parameter 'mdoe'" in node.last_error and "did you mean 'mode'?" in node.last_error
    assert node.predictor is None


def test_a_typoed_parameter_in_a_params_file_is_reported(ros_context, tmp_path):
    import rclpy
    from rclpy.context import Context

    from ovsam_ros.ros.node import OVSAMNode

    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    model: tiny\n    num_threads: 1\n    mdoe: everything\n")
    context = Context()
    rclpy.init(args=["x", "--ros-args", "--params-file", str(params)], context=context)
    try:
        node = OVSAMNode("ovsam_params_file", context=context, start_worker=False)
        try:
            assert "mdoe" in node.param_errors and "did you mean 'mode'?" in node.param_errors["mdoe"]
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_an_unknown_vocabulary_parameter_stops_configure(make_node):
    # Before: vocabulary 'coco2' became the one-class vocabulary ['coco2'].
    node = make_node(active=False, vocabulary="coco2")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "unknown vocabulary 'coco2'" in node.last_error and "Did you mean 'coco'" in node.last_error


# ----------------------------------------------------------------------------- params files
@pytest.mark.parametrize("content, message", [
    (None, "parameters file not found"),
    ("/**:\n  ros__parameters:\n    mode: [unclosed\n", "is not valid YAML"),
    ("- a\n- b\n", "must map node names"),
    ("/**:\n  mode: everything\n", "has no 'ros__parameters'"),
    ("/**:\n  ros__parameters: 3\n", "must be a mapping"),
])
def test_broken_params_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ParamsFileError, match=message):
        check_params_file(str(path), "ovsam")


def test_params_file_for_another_node_name_is_a_warning(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ovsma:\n  ros__parameters:\n    mode: everything\n")
    [warning] = check_params_file(str(path), "ovsam")
    assert "no section for node '/ovsam'" in warning and "'ovsma'" in warning and "__node:=ovsma" in warning
    for key in ("/**", "/robot/ovsam", "/robot/*", "/**/ovsam", "robot/ovsam"):
        path.write_text(f"{key}:\n  ros__parameters:\n    mode: everything\n")
        assert check_params_file(str(path), "ovsam", "robot") == [], key
    # rcl: 'ovsam' means '/ovsam', not the node of that name in every namespace
    path.write_text("ovsam:\n  ros__parameters:\n    mode: everything\n")
    [warning] = check_params_file(str(path), "ovsam", "robot")
    assert "'/robot/ovsam'" in warning and "/**/ovsam" in warning
    path.write_text("robot:\n  ovsam:\n    ros__parameters:\n      mode: everything\n")  # nested namespaces
    assert read_params_file(str(path)) == ["robot/ovsam"] and check_params_file(str(path), "ovsam", "robot") == []


SECTION_KEYS = ["/**", "**", "ovsam", "/ovsam", "/*", "/*/ovsam", "/**/ovsam", "/robot/ovsam", "robot/ovsam",
                "/robot/*", "/robot/**", "/a/robot/ovsam", "/a/**", "/other/ovsam", "/robot", "/ovsam/robot"]


def test_section_matching_is_rcls_own(tmp_path, ros_context):
    """Which sections apply, compared with what rclpy itself applies to a node of that name."""
    import rclpy
    from rclpy.context import Context

    for namespace in ("/", "/robot", "/a/robot"):
        for key in SECTION_KEYS:
            path = tmp_path / "p.yaml"
            path.write_text(f'"{key}":\n  ros__parameters:\n    probe: 7\n')
            context = Context()
            rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
            try:
                node = rclpy.create_node("ovsam", namespace=namespace, context=context,
                                         automatically_declare_parameters_from_overrides=True)
                applied, name = node.has_parameter("probe"), node.get_fully_qualified_name()
                node.destroy_node()
            finally:
                rclpy.shutdown(context=context)
            assert section_applies(key, name) == applied, (key, name, applied)


def test_node_entry_point_refuses_a_missing_params_file(tmp_path, capsys):
    from ovsam_ros.ros.node_cli import main

    # Before: a raw rclpy RCLError traceback.
    assert main(["--params-file", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "parameters file not found" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    mode: [unclosed\n")
    assert main(["--ros-args", "--params-file", str(bad)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


# ----------------------------------------------------------------------------- set_vocabulary allow-list
@pytest.fixture
def never_read(monkeypatch):
    """Records every vocabulary file the loader opens."""
    import ovsam_ros.model.vocabulary as vocabulary

    opened = []
    real = vocabulary._load_file
    monkeypatch.setattr(vocabulary, "_load_file", lambda path: opened.append(str(path)) or real(path))
    return opened


def _request(node, **fields):
    from ovsam_ros.srv import SetVocabulary

    return node._on_set_vocabulary(SetVocabulary.Request(**fields), SetVocabulary.Response())


def test_set_vocabulary_reads_files_only_from_the_allowed_directories(make_node, tmp_path, never_read):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "warehouse.txt").write_text("pallet\nforklift\n")
    secret = outside / "secret.txt"
    secret.write_text("root password hunter2\n")
    os.symlink(secret, allowed / "link.txt")
    node = make_node(vocabulary_dirs=str(allowed))

    before = node.predictor.vocabulary.classes
    for spec in (str(secret), str(outside / "does_not_exist.txt"), str(allowed / "link.txt"),
                 str(allowed / ".." / "outside" / "secret.txt"), "../outside/secret.txt"):
        response = _request(node, vocabulary=spec)
        assert not response.success, spec
        assert "refused" in response.message and "outside the directories" in response.message, spec
    assert never_read == []  # refused before any read
    assert node.predictor.vocabulary.classes == before

    # inside: by path, or by bare file name; built-ins and inline lists stay allowed
    for spec, classes in ((str(allowed / "warehouse.txt"), ["pallet", "forklift"]),
                          ("warehouse.txt", ["pallet", "forklift"]),
                          ("coco_novel", None), ("cup, /etc/passwd", ["cup", "etc"]), ("inline:red cup", ["red cup"])):
        response = _request(node, vocabulary=spec)
        assert response.success, (spec, response.message)
        if classes is not None:
            assert node.predictor.vocabulary.classes == classes, spec
    assert never_read == [str(allowed / "warehouse.txt")] * 2

    # a lone typo is the unknown-vocabulary error, not a one-class vocabulary
    response = _request(node, vocabulary="coco2")
    assert not response.success and "unknown vocabulary 'coco2'" in response.message


def test_vocabulary_dirs_cannot_be_changed_at_runtime(make_node, tmp_path):
    from rclpy.parameter import Parameter

    node = make_node(active=False)
    result = node.set_parameters([Parameter("vocabulary_dirs", value="/")])[0]
    assert not result.successful and "read-only" in result.reason


# ----------------------------------------------------------------------------- parameters that read files (#24 item 11)
PASSWD_LINE = "root:"  # what /etc/passwd starts with; must never reach a log, a reason or /diagnostics


@pytest.fixture
def passwd():
    if not os.path.isfile("/etc/passwd"):
        pytest.skip("no /etc/passwd")
    return "/etc/passwd"


def _spy_model_reads(monkeypatch) -> list:
    """Records every model source the loader is asked to open."""
    import ovsam_ros.loading as loading

    opened = []
    real = loading.load_specs
    monkeypatch.setattr(loading, "load_specs", lambda source: opened.append(str(source)) or real(source))
    return opened


def test_vocabulary_parameter_follows_the_set_vocabulary_allow_list(make_node, passwd, never_read):
    from rclpy.parameter import Parameter

    # Before: configure succeeded and the lines of /etc/passwd were published as class labels.
    node = make_node(active=False, vocabulary=passwd)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "refused" in node.last_error and "vocabulary_dirs" in node.last_error
    assert node.predictor is None and never_read == []
    # On parameter change (e.g. ros2 param set over the network) too, before anything is read.
    fresh = make_node(active=False, name="ovsam_vocab_param")
    result = fresh.set_parameters([Parameter("vocabulary", value=passwd)])[0]
    assert not result.successful and "refused" in result.reason and "vocabulary_dirs" in result.reason
    assert never_read == []


def test_vocabulary_parameter_inside_vocabulary_dirs_and_builtins_still_work(make_node, tmp_path, never_read):
    (tmp_path / "warehouse.txt").write_text("pallet\nforklift\n")
    node = make_node(vocabulary="warehouse.txt", vocabulary_dirs=str(tmp_path))
    assert node.predictor.vocabulary.classes == ["pallet", "forklift"]
    assert never_read == [str(tmp_path / "warehouse.txt")]
    assert make_node(name="ovsam_vocab_inline", vocabulary="cup, plate").predictor.vocabulary.classes == ["cup", "plate"]


def test_model_parameter_reads_only_bundled_models_and_model_dirs(make_node, passwd, monkeypatch, tmp_path):
    from rclpy.parameter import Parameter

    opened = _spy_model_reads(monkeypatch)
    # Before: configure read /etc/passwd as YAML and put its characters into the error and /diagnostics.
    node = make_node(active=False, model=passwd, name="ovsam_model_passwd")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "refused" in node.last_error and "model_dirs" in node.last_error
    assert PASSWD_LINE not in node.last_error
    assert all(PASSWD_LINE not in v for v in values_of_diagnostics(node).values())
    assert opened == []
    result = make_node(active=False, name="ovsam_model_param").set_parameters(
        [Parameter("model", value=passwd)])[0]
    assert not result.successful and "refused" in result.reason and opened == []
    # A bare name is a bundled model or a file in model_dirs, never a file in the working directory.
    (tmp_path / "mine.yaml").write_text("model:\n  preset: tiny\npredictor:\n  text_cache_dir: null\n")
    monkeypatch.chdir(tmp_path)
    node = make_node(active=False, model="mine.yaml", name="ovsam_model_cwd")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "mine.yaml" in node.last_error and opened == []
    # In model_dirs, by name or by path: loaded.
    for model in ("mine.yaml", str(tmp_path / "mine.yaml")):
        node = make_node(model=model, model_dirs=str(tmp_path), name="ovsam_model_dirs")
        assert node.predictor is not None and opened[-1] == str(tmp_path / "mine.yaml")
    assert make_node(model="tiny", name="ovsam_model_bundled").predictor is not None


def test_model_dirs_cannot_be_changed_at_runtime(make_node):
    from rclpy.parameter import Parameter

    node = make_node(active=False, name="ovsam_model_dirs_ro")
    result = node.set_parameters([Parameter("model_dirs", value="/")])[0]
    assert not result.successful and "read-only" in result.reason


def values_of_diagnostics(node) -> dict:
    from ovsam_ros.ros.diagnostics import values_of

    status = node.publish_diagnostics().status[0]
    return {**values_of(node.publish_diagnostics()), "_message": status.message}
