"""Finding diffusers pipeline folders (a ``model_index.json`` each) below a models folder, in bounded work.

ComfyUI lists ``models/diffusers`` while it starts (Load DiT from diffusers folder's schema names the folders), so
a tree that never ends - a link loop such as ``a -> .`` - must not make the walk endless.
"""

from __future__ import annotations

import logging
import os
from collections import deque

# How deep below the root a pipeline folder may sit (org/name/... and the Hugging Face cache layout
# models--org--name/snapshots/<hash> are 3 deep) and how many folders the walk visits at most.
MAX_FOLDER_DEPTH = 4
MAX_FOLDERS = 10000


def pipeline_folders(root: str, max_depth: int = MAX_FOLDER_DEPTH, max_folders: int = MAX_FOLDERS) -> list[str]:
    """Folders below ``root`` that hold a model_index.json, breadth first, following links.

    The listing runs while ComfyUI starts (the node's schema lists the folders), so the walk is bounded: each real
    folder is entered once (a link loop such as ``a -> .`` would otherwise be walked forever), at most
    ``max_depth`` levels below ``root``, at most ``max_folders`` folders in all (then a warning), and a pipeline
    folder's own subfolders (transformer/, vae/, ...) are not searched.
    """
    visited = {os.path.realpath(root)}
    pending = deque([(root, 0)])
    found = []
    while pending:
        path, depth = pending.popleft()
        try:
            with os.scandir(path) as entries:
                children = sorted(entry.path for entry in entries if entry.is_dir())  # is_dir follows links
        except OSError:
            continue  # unreadable or vanished: nothing to list there
        for child in children:
            real = os.path.realpath(child)
            if real in visited:
                continue
            if len(visited) > max_folders:
                logging.warning("DiTF: stopped listing models/diffusers after %d folders under %s; keep diffusers "
                                "folders at most %d levels deep in a smaller tree", max_folders, root, max_depth)
                return found
            visited.add(real)
            if os.path.isfile(os.path.join(child, "model_index.json")):
                found.append(child)
            elif depth + 1 < max_depth:
                pending.append((child, depth + 1))
    return found
