"""The private-names import contract (tools/import_contracts.py) that `lint-imports` runs."""

import sys

from tools.import_contracts import private_imports


def test_private_names_from_other_modules_are_found(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '1'\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("_hidden = 1\npublic = 2\n")
    (pkg / "sub" / "b.py").write_text(
        "from pkgx.sub.a import _hidden, public\n"
        "from pkgx import __version__\n"
        "from .a import (\n    public as p,\n    _hidden as h,\n)\n"
        "def f():\n    from pkgx.sub.a import _hidden\n"
        "from os import _exit\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = private_imports("pkgx.sub.b", "pkgx")
    assert found == [
        (1, "pkgx.sub.a", "_hidden"),
        (3, "pkgx.sub.a", "_hidden"),
        (8, "pkgx.sub.a", "_hidden"),
    ]
    assert private_imports("pkgx.sub.a", "pkgx") == []
    sys.modules.pop("pkgx", None)


def test_the_package_itself_imports_no_private_name():
    import pkgutil

    import ptxseg

    names = [m.name for m in pkgutil.walk_packages(ptxseg.__path__, "ptxseg.")]
    assert len(names) > 40
    assert [(n, *f) for n in names for f in private_imports(n, "ptxseg")] == []
