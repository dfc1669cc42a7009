"""The shape the code keeps (docs/method.md, style): stages call no stage, and `repo train` reads on one page."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_stages_import_no_stage_but_their_settings():
    """A stage module imports the library (data/, pipeline/) and stages/configs.py (the commands' settings), never
    another stage; demo.py, which runs the commands one after the other, is the one exception."""
    found = []
    for path in sorted((REPO / "stages").glob("*.py")):
        if path.name == "demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("re_po.stages"):
                names = [alias.name for alias in node.names]
                if node.module != "re_po.stages.configs" and names != ["configs"]:
                    found.append(f"{path.name}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("re_po.stages")]
    assert not found, found


def test_pipeline_is_pure_math():
    """pipeline/ reads and writes no file: it imports neither data/ nor stages/ (a type named in annotations
    aside) nor a module that touches the file system."""
    io_modules = {"os", "pathlib", "tempfile", "shutil", "io", "pickle", "json"}
    found = []
    for path in sorted((REPO / "pipeline").glob("*.py")):
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                modules = ["open()"]
            else:
                continue
            found += [f"{path.name}: {m}" for m in modules if m == "open()" or m.split(".")[0] in io_modules
                      or m.startswith(("re_po.data", "re_po.stages"))]
    assert not found, found


def test_the_training_stage_and_its_loop_fit_on_a_page():
    text = (REPO / "stages" / "train.py").read_text()
    assert len(text.splitlines()) <= 350
    loop = re.search(r"^def _loop\(.*?(?=^\S)", text, re.MULTILINE | re.DOTALL).group(0).rstrip().splitlines()
    assert len(loop) <= 60, len(loop)
