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
    the first part of it found wrong, `reason` says why in one line, `fix` what would make that
    component trustworthy (None when it is missing or unreadable rather than untrusted)."""

    def __init__(self, component: str, reason: str, fix: str | None = None):
        super().__init__(reason)
        self.component, self.reason, self.fix = component, reason, fix


def resolve_trusted(path: str, user_mounts: dict[int, int] | None = None, sticky_above: bool = False) -> str:
    """The absolute path without symlinks that `path` names, if root alone controls every
    component on the way (the last one included); else UntrustedPath. The last component may be
    any file type; the caller decides what it must be. `user_mounts` is
    parse_user_fuse_mounts' answer (read from /proc/self/mountinfo when None). `sticky_above`
    admits a sticky directory (/tmp) above the last component, for a directory binfmtd itself
    keeps there: others cannot rename or delete root's names in it, and a path walked to its end
    through root's names only has no link of theirs to re-point."""
    if not path.startswith("/"):
        raise UntrustedPath(path, f"{path} is not an absolute path")
    if user_mounts is None:
        user_mounts = read_user_fuse_mounts()
    resolved = "/"
    _require_root_only("/", _lstat("/"), user_mounts, sticky_above)
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
            links += 1
            target = _link_target(path, current, st, user_mounts, links)
            if target.startswith("/"):
                resolved = "/"
            pending[:0] = [p for p in target.split("/") if p]
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise UntrustedPath(current, f"{current} is not a directory")
        _require_root_only(current, st, user_mounts, sticky_above and bool(pending))
        resolved = current
    return resolved


def _link_target(path: str, link: str, st: os.stat_result, user_mounts: dict[int, int], links: int) -> str:
    """Where `link`, the `links`-th symlink met on the way along `path`, points, if root owns it."""
    # A link's own mode means nothing (always 0777); its owner decides where it points.
    _require_root_only(link, st, user_mounts)
    if links > MAX_SYMLINKS:
        raise UntrustedPath(link, f"{path} has more than {MAX_SYMLINKS} symlinks on the way (a loop?)")
    try:
        return os.readlink(link)
    except OSError as exc:
        raise UntrustedPath(link, f"symlink {link} cannot be read ({exc.strerror})") from None


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise UntrustedPath(path, f"{path} cannot be read ({exc.strerror})") from None


def _require_root_only(path: str, st: os.stat_result, user_mounts: dict[int, int], sticky_ok: bool = False) -> None:
    """Owned by root and writable by root alone (sticky or not), on a filesystem whose owners
    are facts rather than some user's claims."""
    kind = {stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}.get(stat.S_IFMT(st.st_mode), "file")
    if st.st_dev in user_mounts:
        raise UntrustedPath(path, f"{kind} {path} is on a FUSE filesystem mounted by {_user(user_mounts[st.st_dev])}, "
                                  "which reports whatever owner its daemon likes",
                            "keep the file off that user's FUSE mount")
    if st.st_uid != 0:
        fix = f"replace symlink {path} with one root owns (or remove it)" if kind == "symlink" else \
            f"chown root {path} and chmod go-w {path}"
        raise UntrustedPath(path, f"{kind} {path} is owned by {_user(st.st_uid)}, not root", fix)
    if kind == "symlink" or (sticky_ok and kind == "directory" and st.st_mode & stat.S_ISVTX):
        return
    if st.st_mode & stat.S_IWOTH:
        if kind == "directory" and st.st_mode & stat.S_ISVTX:
            raise UntrustedPath(path, f"directory {path} is writable by everyone (sticky or not: others can add names "
                                      "there and re-point their own links)",
                                f"keep the file out of the shared directory {path}")
        raise UntrustedPath(path, f"{kind} {path} is writable by everyone", f"chmod go-w {path}")
    if st.st_mode & stat.S_IWGRP:
        raise UntrustedPath(path, f"{kind} {path} is writable by group {_group(st.st_gid)!r}", f"chmod go-w {path}")


def parse_user_fuse_mounts(mountinfo: str) -> dict[int, int]:
    """st_dev -> uid for each FUSE filesystem that a user other than root mounted, from the text
    of /proc/self/mountinfo (the `user_id` option fusermount passes). On such a mount a file's
    owner and mode are whatever that user's daemon answers (with user_allow_other, root sees it)."""
    mounts = {}
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 3 or len(tail) < 3 or tail[0].split(".")[0] not in ("fuse", "fuseblk"):
            continue
        uids = [option[len("user_id="):] for option in tail[2].split(",") if option.startswith("user_id=")]
        if uids and uids[0].isdigit() and int(uids[0]) != 0:
            major, _, minor = fields[2].partition(":")
            mounts[os.makedev(int(major), int(minor))] = int(uids[0])
    return mounts


def read_user_fuse_mounts() -> dict[int, int]:
    try:
        with open("/proc/self/mountinfo") as f:
            return parse_user_fuse_mounts(f.read())
    except OSError:
        return {}


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
