"""Checks on the paths commands write to, made before any work: a file where a folder is
expected (or the other way round), a parent that is a file, a folder that is not writable.
Each is a UserError naming the flag."""
from __future__ import annotations

import os

from hdc.errors import UserError


def existing_parent(path: str) -> str:
    """The nearest folder above `path` that exists (what creating `path` would start from)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    return parent


def check_output_file(path: str, flag: str) -> None:
    """`path` can be written as a file: it is not a folder and its parent can be made and written."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    _check_parent(path, flag)


def check_output_folder(path: str, flag: str) -> None:
    """`path` can be a folder: it is not a file and its parent can be made and written."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, not a folder; give a folder")
    _check_parent(path, flag)


def _check_parent(path: str, flag: str) -> None:
    parent = existing_parent(path)
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable")
