"""The process's file-creation mask, for files written through a temporary file.

``tempfile.mkstemp`` creates files readable by their owner only (0600); a
model or export file renamed into place from one should instead have the
permissions any other file the user creates gets: ``0666 & ~umask``.
"""
import os


def current_umask():
    """The umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode():
    """Permission bits of a newly created regular file: 0666 minus the umask."""
    return 0o666 & ~current_umask()
