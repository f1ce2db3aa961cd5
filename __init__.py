"""ComfyUI entry point of the DiTF node pack.

ComfyUI imports this folder as a package and reads ``comfy_entrypoint`` and ``WEB_DIRECTORY``. Outside ComfyUI
(pytest, ``python -m ditf_core``) the ComfyUI modules are absent and only the engine, ``ditf_core``, is used.
"""

WEB_DIRECTORY = "./web"

# pytest imports this file as a plain module (no parent package) when the checkout's folder name is not an
# identifier, e.g. the registry name ``comfyui-ditf``; the node glue is only reachable as a package.
if __package__:
    try:
        from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI's V3 entry point)
        from .nodes import routes  # noqa: F401  (registers the live explorer's HTTP route on ComfyUI's server)
    except ImportError as error:  # not running inside ComfyUI
        if getattr(error, "name", None) is None or not error.name.startswith(("comfy", "server", "folder_paths")):
            raise
