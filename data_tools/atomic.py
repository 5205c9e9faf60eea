"""Write an output file so that a failed or interrupted run leaves nothing behind.

The data goes to a temporary file in the output's own directory and replaces the output with
os.replace only when everything succeeded; on any exception (KeyboardInterrupt included) the
temporary file is removed and an existing output file is left untouched.
"""

import contextlib
import os
import tempfile

from .errors import DataToolsError


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path next to `path`; it becomes `path` when the block succeeds."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise DataToolsError("output is a directory", path)
    if not os.path.isdir(directory):
        raise DataToolsError("output directory does not exist", directory)
    handle, temp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        yield temp_path
        os.chmod(temp_path, _mode_for(path))
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise


def _mode_for(path):
    """The permissions `path` has now, or those a newly created file would get (mkstemp uses 0600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
