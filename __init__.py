"""ComfyUI entry point of the DiTF node pack.

ComfyUI imports this folder as a package and reads ``comfy_entrypoint`` and ``WEB_DIRECTORY``. Outside ComfyUI
(pytest, ``python -m ditf_core``) the ComfyUI modules are absent and only the engine, ``ditf_core``, is used.
"""

WEB_DIRECTORY = "./web"

try:
    from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI's V3 entry point)
    from .nodes import routes  # noqa: F401  (registers the live explorer's HTTP route on ComfyUI's server)
except ImportError as error:  # not running inside ComfyUI
    if getattr(error, "name", None) is None or not error.name.startswith(("comfy", "server", "folder_paths")):
        raise
