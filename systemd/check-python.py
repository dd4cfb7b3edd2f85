"""Run with the python3 that will create the virtualenv: exits 0 quietly if it can run metadata-proxy, or
exits 1 with the one sentence that says what to install. Without it, the first complaint is pip's, about a
dependency (aiohttp, setuptools) rather than about Python. Kept runnable by any old Python, even 2.7."""

import sys

NEEDED = (3, 11)
HOW = ("Debian/Ubuntu: sudo apt install python3-venv; "
       "Amazon Linux 2023: sudo dnf install python3.11, then use python3.11 instead of python3")


def problem():
    if tuple(sys.version_info[:2]) < NEEDED:
        return "this is Python %d.%d" % tuple(sys.version_info[:2])
    try:
        import ensurepip  # noqa: F401  (Debian and Ubuntu ship it in python3-venv, apart from the interpreter)
    except ImportError:
        return "its venv module is not installed"
    return None


if __name__ == "__main__":
    found = problem()
    if found:
        sys.stderr.write("metadata-proxy needs Python %d.%d or newer with its venv module, and %s (%s).\n"
                         % (NEEDED + (found, HOW)))
        sys.exit(1)
