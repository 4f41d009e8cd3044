"""The dashboard in a real browser. A package, so that its conftest does not take the
place of tests/conftest.py as the module ``conftest`` the other tests import from."""
