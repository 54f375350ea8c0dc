"""``python train.py --help``: the config groups a user picks from and the config with its values resolved.

Hydra's default help lists every group it knows, internal ones included (the schemas in ``ConfigStore``, the
presets' shared base ``model/preset``), and prints the ``model`` keys as the ``${zoo_preset:...}`` interpolations
they are. ``conf/hydra/default.yaml``'s help template calls the resolver registered here instead:
``${train_help:groups}`` and ``${train_help:config}``.
"""

from typing import List

from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from omegaconf import DictConfig, OmegaConf

RESOLVER = "train_help"
HIDDEN_GROUPS = ("hydra", "schema")
"""Groups (and their subgroups) that configure the app itself, not a run."""
HIDDEN_OPTIONS = {"model": ("preset",)}
"""Options of a group that only other options build on (``model=preset`` has no preset name)."""


def config_groups() -> List[str]:
    """``group: option, option`` lines for the groups a user chooses from, hidden ones left out."""
    loader = GlobalHydra.instance().config_loader()

    def walk(parent: str) -> List[str]:
        found = []
        for child in sorted(loader.list_groups(parent)):
            group = f"{parent}/{child}" if parent else child
            if group.split("/")[0] in HIDDEN_GROUPS:
                continue
            if loader.get_group_options(group, ObjectType.CONFIG):
                found.append(group)
            found += walk(group)
        return found

    lines = []
    for group in walk(""):
        options = [o for o in sorted(loader.get_group_options(group)) if o not in HIDDEN_OPTIONS.get(group, ())]
        lines.append(f"{group}: {', '.join(options)}")
    return lines


def resolved_config(root: DictConfig) -> str:
    """The run's config (everything but ``hydra``) as YAML, interpolations replaced by their values."""
    job = {}
    for key in root:
        if key == "hydra":
            continue
        node = root[key]
        job[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return OmegaConf.to_yaml(job)


def help_text(what: str, *, _root_: DictConfig) -> str:
    """``groups`` or ``config`` for the help template (``$`` doubled: the template is a ``string.Template``)."""
    if what == "groups":
        text = "\n".join(config_groups())
    elif what == "config":
        try:
            text = resolved_config(_root_)
        except Exception as error:   # a choice that cannot resolve (it fails the same way at start-up)
            text = f"(cannot resolve the config: {' '.join(str(error).split()[:30])})"
    else:
        raise ValueError(f"${{{RESOLVER}:{what}}}: expected groups or config")
    return text.replace("$", "$$")


def register() -> None:
    """Register the ``train_help`` resolver (again: a no-op)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, help_text, use_cache=False)

