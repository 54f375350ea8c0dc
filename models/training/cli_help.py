"""``python train.py --help``: the config groups a user picks from and the config with its values resolved.

Hydra's default help lists every group it knows, internal ones included (the schemas in ``ConfigStore``, the
presets' shared base ``model/preset``), and prints the ``model`` keys as the ``${zoo_preset:...}`` interpolations
they are. ``conf/hydra/default.yaml``'s help template calls the resolver registered here instead:
``${train_help:groups}`` and ``${train_help:config}``.

``help_page`` is what ``train.py --help`` prints, composed once with the compose API: Hydra's own ``--help`` also
lists every config group twice, for template placeholders this template does not use, each listing a deep copy
of the whole config repository (seconds of start-up).
"""

import string
from pathlib import Path
from typing import List, Optional

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
    # One repository for every question: the loader's own methods deep-copy it at each call.
    loader = getattr(loader, "repository", loader)

    def walk(parent: str) -> List[str]:
        found = []
        for child in sorted(loader.get_group_options(parent, ObjectType.GROUP)):
            group = f"{parent}/{child}" if parent else child
            if group.split("/")[0] in HIDDEN_GROUPS:
                continue
            if loader.get_group_options(group, ObjectType.CONFIG):
                found.append(group)
            found += walk(group)
        return found

    lines = []
    for group in walk(""):
        options = [o for o in sorted(loader.get_group_options(group, ObjectType.CONFIG))
                   if o not in HIDDEN_OPTIONS.get(group, ())]
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


def help_page(config_dir: Path, config_name: str, overrides: List[str]) -> Optional[str]:
    """The text ``--help`` prints for ``config_name`` in ``config_dir`` with ``overrides`` (``hydra.help.template``,
    resolved as Hydra resolves it); None when the template uses one of Hydra's own placeholders (``$FLAGS_HELP``,
    ``$CONFIG``, ...): Hydra's ``--help`` draws those."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        template = compose(config_name=config_name, overrides=overrides, return_hydra_config=True).hydra.help.template
    try:
        return string.Template(template).substitute()
    except (KeyError, ValueError):
        return None


def register() -> None:
    """Register the ``train_help`` resolver (again: a no-op)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, help_text, use_cache=False)

