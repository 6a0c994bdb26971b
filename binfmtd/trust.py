"""Whether root alone controls a path (sudo's secure-path rule), and the path it really names.

binfmtd runs as root and hands paths to the kernel, which later runs what they name as whoever
starts a foreign program (root included). So a path is trusted only if no one but root can
change what it names: every directory walked and every symlink followed is owned by root, and
no directory or file on the way is writable by group or others. A sticky bit does not help: it
stops others from replacing root's names in a directory, not from adding their own or from
changing what their own links point at. The walk is done here, component by component, with
lstat (os.path.realpath would follow links without telling whose they are), and the result is
the resolved path: registering it leaves no link for anyone to re-point later.

Group write is refused even for group root: a POSIX ACL granting write to some user shows in
the group bits too (as the ACL mask), so this one test also covers ACLs.
"""

from __future__ import annotations

import os
import stat

MAX_SYMLINKS = 40  # the kernel's own limit before ELOOP


class UntrustedPath(Exception):
    """A path that someone other than root controls, or that cannot be walked: `component` is
    the first part of it found wrong, `kind` what that is (symlink, directory, file or None when
    it could not be examined), `shared` whether it is a directory everyone may write to (/tmp:
    the fix is to keep the file elsewhere, not to change /tmp), `reason` says why in one line."""

    def __init__(self, component: str, reason: str, kind: str | None = None, shared: bool = False):
        super().__init__(reason)
        self.component, self.reason, self.kind, self.shared = component, reason, kind, shared


def resolve_trusted(path: str) -> str:
    """The absolute path without symlinks that `path` names, if root alone controls every
    component on the way (the last one included); else UntrustedPath. The last component may be
    any file type; the caller decides what it must be."""
    if not path.startswith("/"):
        raise UntrustedPath(path, f"{path} is not an absolute path")
    resolved = "/"
    _require_root_only("/", _lstat("/"))
    pending = [part for part in path.split("/") if part]
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":  # the parent of a resolved directory: already checked on the way here
            resolved = os.path.dirname(resolved)
            continue
        current = os.path.join(resolved, part)
        st = _lstat(current)
        if stat.S_ISLNK(st.st_mode):
            # A link's own mode means nothing (always 0777); its owner decides where it points.
            if st.st_uid != 0:
                raise UntrustedPath(current, f"symlink {current} is owned by {_user(st.st_uid)}, not root",
                                    "symlink")
            links += 1
            if links > MAX_SYMLINKS:
                raise UntrustedPath(current, f"{path} has more than {MAX_SYMLINKS} symlinks on the way (a loop?)")
            try:
                target = os.readlink(current)
            except OSError as exc:
                raise UntrustedPath(current, f"symlink {current} cannot be read ({exc.strerror})") from None
            if target.startswith("/"):
                resolved = "/"
            pending[:0] = [p for p in target.split("/") if p]
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise UntrustedPath(current, f"{current} is not a directory")
        _require_root_only(current, st)
        resolved = current
    return resolved


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise UntrustedPath(path, f"{path} cannot be read ({exc.strerror})") from None


def _require_root_only(path: str, st: os.stat_result) -> None:
    """Owned by root and writable by root alone (sticky or not)."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if st.st_uid != 0:
        raise UntrustedPath(path, f"{kind} {path} is owned by {_user(st.st_uid)}, not root", kind)
    if st.st_mode & stat.S_IWOTH:
        sticky = " (sticky or not: others can add names there and re-point their own links)" \
            if kind == "directory" and st.st_mode & stat.S_ISVTX else ""
        raise UntrustedPath(path, f"{kind} {path} is writable by everyone{sticky}", kind, bool(sticky))
    if st.st_mode & stat.S_IWGRP:
        raise UntrustedPath(path, f"{kind} {path} is writable by group {_group(st.st_gid)!r}", kind)


def _user(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
