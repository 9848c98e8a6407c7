"""Where models come from: local folders only (no hub here), with a message that says what to
do when a user passes a Hugging Face Hub id, and the chat-template choice for a tokenizer."""
from __future__ import annotations

import re
from pathlib import Path

from hdc.errors import UserError

# owner/name as the Hub spells repository ids (e.g. Qwen/Qwen2-0.5B-Instruct)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def require_model_dir(path: str | Path, field: str) -> str:
    """`path` as a string when it is a local folder; else a one-line UserError naming `field`,
    which for what may be a Hub id (owner/name, no owner/ folder here) says how to download it
    and pass the folder instead."""
    path = str(path)
    if Path(path).is_dir():
        return path
    if HUB_ID.match(path) and not Path(path.split("/")[0]).exists():  # runs/x with a runs/ here is a local path
        local = f"models/{path.split('/')[-1]}"
        raise UserError(f"{field}: no such directory {path!r}; if it is a Hugging Face Hub id, download it first "
                        f"(hdc loads local folders only, nothing is downloaded at run time), e.g. "
                        f"`huggingface-cli download {path} --local-dir {local}`, then pass {local}")
    raise UserError(f"{field}: no such directory {path!r}")


def wants_chat_template(tokenizer, setting: bool | str) -> bool:
    """data.use_chat_template: auto means use the tokenizer's template when it has one (a base
    model's tokenizer often has none); true insists on it."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if setting == "auto":
        return has
    if setting and not has:
        raise UserError("data.use_chat_template: true, but the tokenizer has no chat template; use auto or false "
                        "(prompts are then passed as plain text)")
    return bool(setting)
