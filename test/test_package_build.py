"""The ROS package is well formed and builds the way colcon builds it."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_a_valid_format_3_manifest():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "ovsam_ros" and package.package_format == 3
    assert [e.content for e in package.exports if e.tagname == "build_type"] == ["ament_cmake"]
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    setup_py = (ROOT / "setup.py").read_text()
    assert f'version="{package.version}"' in setup_py, "package.xml and setup.py versions differ"


def test_every_interface_file_is_generated():
    listed = set(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', (ROOT / "CMakeLists.txt").read_text()))
    on_disk = {str(p.relative_to(ROOT)) for p in [*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv")]}
    assert listed == on_disk


# The colcon-style install itself (build, run the node from the prefix) is test/ros/test_install.py.


def test_runtime_dependencies_for_rosdep():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    exec_deps = {d.name for d in package.exec_depends}
    assert "vision_msgs" in exec_deps  # ~/detections on real installs
    # One OpenCV and one numpy per install path: the system ones (rosdep) for ROS installs,
    # so the pip files for ROS installs must not bring a second copy.
    assert {"python3-opencv", "python3-numpy"} <= exec_deps
    for name in ("requirements-ros.txt", "requirements-jetson.txt"):
        lines = [ln.split("#")[0].strip().lower() for ln in (ROOT / name).read_text().splitlines()]
        pins = [ln for ln in lines if ln]
        assert not [p for p in pins if p.startswith(("opencv", "ros-"))], (name, pins)
    jetson = [ln.split("#")[0].strip() for ln in (ROOT / "requirements-jetson.txt").read_text().splitlines()]
    assert not [p for p in jetson if re.match(r"(torch|torchvision|onnxruntime)\b", p)]  # NVIDIA's wheels
    assert "numpy<2" in jetson  # Humble's cv_bridge / rclpy numpy ABI
    assert "ament_cmake_pytest" in {d.name for d in package.test_depends}


# Python module -> the ROS package (rosdep key) that provides it; modules of this package are its own.
ROS_MODULES = {"rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces", "builtin_interfaces": "builtin_interfaces",
               "lifecycle_msgs": "lifecycle_msgs", "diagnostic_msgs": "diagnostic_msgs", "std_srvs": "std_srvs",
               "std_msgs": "std_msgs", "sensor_msgs": "sensor_msgs", "geometry_msgs": "geometry_msgs",
               "vision_msgs": "vision_msgs", "tf2_ros": "tf2_ros_py", "launch": "launch", "launch_ros": "launch_ros",
               "diagnostic_updater": "diagnostic_updater", "message_filters": "message_filters",
               "visualization_msgs": "visualization_msgs", "cv_bridge": "cv_bridge"}


def test_package_xml_names_every_ros_package_the_code_imports():
    """Every ROS module imported by the installed code (package, launch file, scripts) is a dependency."""
    import ast

    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    declared = {d.name for d in [*package.exec_depends, *package.build_export_depends, *package.build_depends]}
    imported = set()
    for path in [*ROOT.glob("ovsam_ros/**/*.py"), *ROOT.glob("launch/*.py"), *ROOT.glob("scripts/*")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    used = {ROS_MODULES[m] for m in imported if m in ROS_MODULES}
    assert {"rclpy", "rcl_interfaces", "launch_ros", "vision_msgs", "tf2_ros_py"} <= used  # the scan sees them
    assert used <= declared, sorted(used - declared)
    # msg/srv dependencies (rosidl) are build + exec dependencies
    assert {"std_msgs", "sensor_msgs", "geometry_msgs"} <= {d.name for d in package.build_depends}
    # every test tool the ROS-tool tests use is a test dependency
    tests = {d.name for d in package.test_depends}
    assert {"launch_testing", "launch_testing_ros", "ros2cli", "ros2lifecycle", "ros2param", "ros2topic"} <= tests


def test_colcon_test_runs_the_pytest_suite():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    block = cmake[cmake.index("if(BUILD_TESTING)"):]
    assert "find_package(ament_cmake_pytest REQUIRED)" in block and "ament_add_pytest_test(" in block
    assert block.index("endif()") < block.index("ament_package()")


def test_cmake_installs_the_console_scripts_of_setup_py():
    """CMake reads setup.py's entry points (one list); the colcon install test checks the wrappers."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert 'file(STRINGS "${CMAKE_CURRENT_SOURCE_DIR}/setup.py" OVSAM_ENTRY_LINES' in cmake
    assert "install(PROGRAMS \"${script}\" DESTINATION bin)" in cmake
    assert len(re.findall(r'"([\w-]+) = ([\w.]+:\w+)",', (ROOT / "setup.py").read_text())) >= 10


def test_imports_run_one_way():
    """Lower layers never import the CLI, the node or the loader's optional backends by name."""
    import ast

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    package = ROOT / "ovsam_ros"
    for path in [*package.glob("ros/*.py"), package / "prompts.py", package / "prompt_parsing.py",
                 package / "loading.py", package / "backends.py", *package.glob("model/*.py")]:
        assert "ovsam_ros.cli" not in imported(path), path
    assert not {m for m in imported(package / "loading.py") if m.startswith("ovsam_ros.export")}
    for path in package.glob("model/*.py"):
        assert not {m for m in imported(path) if m.startswith(("ovsam_ros.ros", "rclpy", "ovsam_ros.loading"))}, path
