"""Slicer installs only the files that the CMakeLists.txt files list: check the lists against the tree.

Every Python file and resource of the module (CGCLesionSeg.py, CGCLesionSegLib with its
sub-packages, Resources/) and of CGCTraining must be listed, and every listed file must exist.
On failure the message shows the lines to paste into the CMake list.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "CGCLesionSeg"
TRAINING_DIR = REPO_ROOT / "CGCTraining"
IGNORED_NAMES = {"__pycache__", ".DS_Store", "CMakeLists.txt", ".gitignore"}
IGNORED_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", "~")


def strip_comments(text: str) -> str:
    """Drop CMake line comments (``#`` outside double quotes)."""
    out = []
    for line in text.splitlines():
        in_quote = False
        for i, ch in enumerate(line):
            if ch == '"':
                in_quote = not in_quote
            elif ch == "#" and not in_quote:
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``[(command_name_lowercase, [arguments])]`` of a CMake file.

    Quoted arguments keep spaces, parentheses and ``#``; unquoted ones split on whitespace.
    """
    text = strip_comments(path.read_text())
    commands = []
    for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text):
        if match.start() > 0 and (text[match.start() - 1].isalnum() or text[match.start() - 1] in '_"$'):
            continue
        args, token, depth, i, quoted = [], "", 0, match.end(), False
        while i < len(text):
            ch = text[i]
            if quoted:
                if ch == '"':
                    quoted = False
                    args.append(token)
                    token = ""
                else:
                    token += ch
            elif ch == '"':
                quoted = True
            elif ch == "(":
                depth += 1
                token += ch
            elif ch == ")" and depth:
                depth -= 1
                token += ch
            elif ch == ")":
                break
            elif ch.isspace():
                if token:
                    args.append(token)
                token = ""
            else:
                token += ch
            i += 1
        if token:
            args.append(token)
        commands.append((match.group(1).lower(), args))
    return commands


def cmake_variables(path: Path, initial: dict | None = None) -> dict[str, list[str]]:
    """Values of ``set(VAR ...)``, with ``${VAR}`` references to earlier variables expanded."""
    variables: dict[str, list[str]] = dict(initial or {})

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables.get(m.group(1), [m.group(0)])), value)

    for name, args in cmake_commands(path):
        if name == "set" and args:
            values: list[str] = []
            for arg in args[1:]:
                values.extend(v for v in expand(arg).split(";") if v)
            variables[args[0]] = values
    return variables


def files_under(folder: Path) -> set[str]:
    """Files under ``folder`` (relative, POSIX), without caches, CMake files and editor leftovers."""
    found = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_dir() or any(part in IGNORED_NAMES for part in rel.parts):
            continue
        if path.name.endswith(IGNORED_SUFFIXES) or any(part.startswith(".") for part in rel.parts):
            continue
        found.add(rel.as_posix())
    return found


def _report(missing: set[str], absent: set[str], where: str, variable: str) -> str:
    lines = []
    if missing:
        lines.append(f"not listed in {where} ({variable}); add:\n" + "\n".join(f"  {p}" for p in sorted(missing)))
    if absent:
        lines.append(f"listed in {where} but missing on disk:\n" + "\n".join(f"  {p}" for p in sorted(absent)))
    return "\n".join(lines)


# ---- the parser itself ------------------------------------------------------------------------

def test_cmake_parser(tmp_path):
    f = tmp_path / "CMakeLists.txt"
    f.write_text('set(NAME Mod) # comment ( with paren\nset(FILES\n  ${NAME}.py  # the module\n  a/b.py\n'
                 '  "Resources/x y.png"\n  )\nfoo(BAR "#not a comment (really)")\n')
    variables = cmake_variables(f)
    assert variables["FILES"] == ["Mod.py", "a/b.py", "Resources/x y.png"]
    assert ("foo", ["BAR", "#not a comment (really)"]) in cmake_commands(f)


# ---- the module ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def module_lists():
    variables = cmake_variables(MODULE_DIR / "CMakeLists.txt")
    return set(variables["MODULE_PYTHON_SCRIPTS"]), set(variables["MODULE_PYTHON_RESOURCES"])


def test_module_uses_the_scripted_module_macro_with_generic_tests():
    commands = dict((name, args) for name, args in cmake_commands(MODULE_DIR / "CMakeLists.txt")
                    if name == "slicermacrobuildscriptedmodule")
    args = commands.get("slicermacrobuildscriptedmodule")
    assert args is not None, "CGCLesionSeg/CMakeLists.txt must call slicerMacroBuildScriptedModule"
    assert "WITH_GENERIC_TESTS" in args
    assert args[args.index("NAME") + 1] == "${MODULE_NAME}"
    assert "${MODULE_PYTHON_SCRIPTS}" in args and "${MODULE_PYTHON_RESOURCES}" in args
    assert cmake_variables(MODULE_DIR / "CMakeLists.txt")["MODULE_NAME"] == ["CGCLesionSeg"]


def test_every_module_python_file_is_listed(module_lists):
    scripts, _ = module_lists
    on_disk = {"CGCLesionSeg.py"} | {f"CGCLesionSegLib/{p}" for p in files_under(MODULE_DIR / "CGCLesionSegLib")
                                     if p.endswith(".py")}
    on_disk |= {f"CGCLesionSegSlicer/{p}" for p in files_under(MODULE_DIR / "CGCLesionSegSlicer")
                if p.endswith(".py")}  # the Slicer-side package (widget, logic, jobs, runner)
    other_py = {p for p in files_under(MODULE_DIR) if p.endswith(".py") and "/" not in p}
    on_disk |= other_py  # any helper .py beside the module file is installed as well
    message = _report(on_disk - scripts, {p for p in scripts if not (MODULE_DIR / p).is_file()},
                      "CGCLesionSeg/CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    assert not message, message


def test_every_module_resource_is_listed(module_lists):
    _, resources = module_lists
    on_disk = {f"Resources/{p}" for p in files_under(MODULE_DIR / "Resources")}
    on_disk |= {f"CGCLesionSegLib/{p}" for p in files_under(MODULE_DIR / "CGCLesionSegLib")
                if not p.endswith(".py")}  # shipped models, model cards, JSON
    message = _report(on_disk - resources, {p for p in resources if not (MODULE_DIR / p).is_file()},
                      "CGCLesionSeg/CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    assert not message, message
    assert {"Resources/UI/CGCLesionSeg.ui", "Resources/Icons/CGCLesionSeg.png"} <= resources


def test_module_self_test_is_registered():
    registrations = [args for name, args in cmake_commands(MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt")
                     if name == "slicer_add_python_unittest"]
    assert registrations, "CGCLesionSeg/Testing/Python/CMakeLists.txt must register the self-test"
    assert any("${MODULE_NAME}.py" in " ".join(a) or "${_module_script}" in a for a in registrations)
    assert ("add_subdirectory", ["Python"]) in cmake_commands(MODULE_DIR / "Testing" / "CMakeLists.txt")
    assert ("add_subdirectory", ["Testing"]) in cmake_commands(MODULE_DIR / "CMakeLists.txt")


# ---- the training package -------------------------------------------------------------------------

def test_every_training_file_is_listed_and_installed_beside_the_module():
    path = TRAINING_DIR / "CMakeLists.txt"
    variables = cmake_variables(path)
    scripts = set(variables["CGCTRAINING_PYTHON_SCRIPTS"])
    resources = set(variables.get("CGCTRAINING_PYTHON_RESOURCES", []))
    on_disk = files_under(TRAINING_DIR)
    py = {p for p in on_disk if p.endswith(".py")}
    message = "\n".join(filter(None, [
        _report(py - scripts, {p for p in scripts if not (TRAINING_DIR / p).is_file()},
                "CGCTraining/CMakeLists.txt", "CGCTRAINING_PYTHON_SCRIPTS"),
        _report((on_disk - py) - resources, {p for p in resources if not (TRAINING_DIR / p).is_file()},
                "CGCTraining/CMakeLists.txt", "CGCTRAINING_PYTHON_RESOURCES")]))
    assert not message, message
    assert {"__init__.py", "__main__.py"} <= scripts
    compile_calls = [args for name, args in cmake_commands(path) if name == "ctkmacrocompilepythonscript"]
    assert len(compile_calls) == 1
    args = compile_calls[0]
    # Copied into <qt-scripted-modules>/CGCTraining and installed into qt-scripted-modules.
    assert args[args.index("DESTINATION_DIR") + 1].endswith("${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/CGCTraining")
    assert args[args.index("INSTALL_DIR") + 1] == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    assert "NO_INSTALL_SUBDIR" not in args  # the folder itself (the package) is installed


# ---- the extension --------------------------------------------------------------------------------

def test_extension_metadata_and_subdirectories():
    path = REPO_ROOT / "CMakeLists.txt"
    variables = cmake_variables(path)
    commands = cmake_commands(path)
    assert ("project", ["CGCLesionSeg"]) in commands
    assert ("add_subdirectory", ["CGCLesionSeg"]) in commands
    assert ("add_subdirectory", ["CGCTraining"]) in commands
    assert variables["EXTENSION_CATEGORY"] == ["Segmentation"]
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert variables.get(key) and variables[key][0].strip(), f"{key} is not set"
    assert "clinical diagnosis" in variables["EXTENSION_DESCRIPTION"][0]
    # Icon and screenshots point into the repository's Resources/ folder, and those files exist.
    urls = variables["EXTENSION_ICONURL"] + " ".join(variables["EXTENSION_SCREENSHOTURLS"]).split()
    for url in urls:
        assert url.startswith("https://") and "/Resources/" in url, url
        local = REPO_ROOT / "Resources" / url.split("/Resources/", 1)[1]
        assert local.is_file(), f"{url} points to {local}, which does not exist"
    assert any(name == "include" and args == ["${Slicer_EXTENSION_CPACK}"] for name, args in commands)


def test_license_is_apache_2():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_pip_package_lists_every_core_subpackage():
    """pyproject.toml's explicit package list must name every folder with an __init__.py."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    match = re.search(r"^packages\s*=\s*\[(.*?)\]", text, re.S | re.M)
    assert match, "pyproject.toml lists no packages"
    listed = set(re.findall(r'"([^"]+)"', match.group(1)))
    expected = set()
    for package, folder in (("CGCLesionSegLib", MODULE_DIR / "CGCLesionSegLib"), ("CGCTraining", TRAINING_DIR)):
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            expected.add(".".join([package, *rel.parts]))
    assert expected <= listed, f"add to pyproject.toml packages: {sorted(expected - listed)}"
