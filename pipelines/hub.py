"""Model folders as standard diffusers artefacts: saved with their own pipeline code, loaded back.

``save_pipeline`` writes a folder that plain diffusers loads without this repository::

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

It copies the pipeline's portable module (``pipeline_adni.py`` / ``pipeline_stylegan2.py``) and
``slices.py`` into the folder, and a custom component's module into its component folder
(``generator/stylegan2_networks.py``), and names them in ``model_index.json`` the way diffusers'
community pipelines and custom components are named (``["pipeline_adni",
"ADNIDiffusionPipeline"]``). ``load_pipeline_folder`` builds the repository's own class from the
same folder, without running the folder's code.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
from pathlib import Path

import diffusers

from . import slices
from .files import replace_dir, restore_dir

PACKAGE = __name__.split(".")[0]


def portable_name(module_name: str, *, pipeline: bool) -> str:
    """File stem a repository module takes in a saved folder: ``pipelines.ldm.pipeline_adni`` ->
    ``pipeline_adni``; a component's ``pipelines.stylegan2.networks`` -> ``stylegan2_networks``."""
    parts = module_name.split(".")[1:]
    return parts[-1] if pipeline else "_".join(parts[-2:])


def portable_source(module) -> str:
    """A module's source as it runs inside a model folder: its imports of ``slices`` made local.

    Portable modules import only third-party packages and ``..slices`` (``slices`` beside them
    in the folder); anything else from this repository would not load there, so it is refused.
    """
    text = inspect.getsource(module)
    text = text.replace("from ..slices import", "from .slices import")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("from .", "import .")) and not \
                stripped.startswith("from .slices import"):
            raise RuntimeError(f"{module.__name__} is not portable: {stripped!r}")
        if stripped.startswith((f"from {PACKAGE}", f"import {PACKAGE}")):
            raise RuntimeError(f"{module.__name__} is not portable: {stripped!r}")
    return text


def save_pipeline(pipe, output_dir: str | Path, card: str) -> Path:
    """Save ``pipe`` with its code and model card into ``output_dir``, one component at a time.

    Written to a temporary folder first; each component folder is then swapped in atomically
    and ``model_index.json`` goes last, so a kill at any moment leaves every component either the
    old or the new complete copy, never neither.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    index = json.loads((tmp / "model_index.json").read_text())
    pipeline_module = importlib.import_module(type(pipe).__module__)
    stem = portable_name(pipeline_module.__name__, pipeline=True)
    (tmp / f"{stem}.py").write_text(portable_source(pipeline_module))
    (tmp / "slices.py").write_text(portable_source(slices))
    index["_class_name"] = [stem, type(pipe).__name__]
    for name, component in pipe.components.items():
        module_name = type(component).__module__
        if module_name.split(".")[0] == PACKAGE:  # our own model class: ship its code
            module = importlib.import_module(module_name)
            component_stem = portable_name(module_name, pipeline=False)
            (tmp / name / f"{component_stem}.py").write_text(portable_source(module))
            index[name] = [component_stem, type(component).__name__]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (tmp / "README.md").write_text(card)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
        target = output_dir / entry.name
        if entry.is_dir():
            replace_dir(entry, target)
        else:
            os.replace(entry, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def read_model_index(model_dir: str | Path) -> dict:
    """``model_index.json`` of a model folder (ValueError naming the problem if unreadable)."""
    path = Path(model_dir) / "model_index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{model_dir} has no model_index.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a diffusers model index")
    return index


def pipeline_class_name(index: dict) -> str | None:
    name = index.get("_class_name")
    return name[1] if isinstance(name, list) and len(name) == 2 else name


def component_names(cls) -> list[str]:
    """The pipeline's components: its ``__init__`` arguments without a default."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in params if p.default is inspect.Parameter.empty]


def load_pipeline_folder(model_dir: str | Path, classes: dict[str, type],
                         custom_components: dict[str, type]):
    """Build this repository's pipeline class from a saved folder (no remote code is run).

    ``classes``: pipeline class by name; ``custom_components``: our model classes by name (the
    components whose code the folder also carries).
    """
    model_dir = Path(model_dir)
    index = read_model_index(model_dir)
    cls = classes[pipeline_class_name(index)]
    components = component_names(cls)
    missing = [n for n in components if not isinstance(index.get(n), list)]
    if missing:
        raise ValueError(f"{model_dir}/model_index.json names no {', '.join(missing)}")
    kwargs = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if name in components:
            restore_dir(model_dir / name)
            if not (model_dir / name).is_dir():
                raise ValueError(f"{model_dir}: component {name}/ is missing")
            library, class_name = value
            if class_name in custom_components:
                component_cls = custom_components[class_name]
            elif library in ("diffusers", "diffusers.schedulers") or hasattr(diffusers, class_name):
                component_cls = getattr(diffusers, class_name)
            else:
                raise ValueError(f"{model_dir}: component {name} is a {library}.{class_name}, "
                                 "which this repository does not know")
            try:
                kwargs[name] = component_cls.from_pretrained(model_dir, subfolder=name)
            except Exception as err:  # any damage: named, with the component, in one line
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ValueError(f"{model_dir}: component {name}/ ({class_name}) cannot be "
                                 f"loaded: {type(err).__name__}: {first[:200]}") from None
        else:
            kwargs[name] = value
    return cls(**kwargs)


def card_header(tags: list[str], pipeline_class: str) -> str:
    """The metadata block the Hub reads at the top of a model card."""
    tag_lines = "\n".join(f"  - {t}" for t in tags)
    return (f"---\nlibrary_name: diffusers\npipeline_tag: unconditional-image-generation\n"
            f"tags:\n{tag_lines}\n  - diffusers:{pipeline_class}\n---\n")


def usage_snippet(call: str) -> str:
    """Python that runs as written with diffusers alone, next to the folder (a test runs it)."""
    return f'''```python
import torch
from diffusers import DiffusionPipeline

# run next to this folder, or give its path; the folder carries its own pipeline code
pipe = DiffusionPipeline.from_pretrained(".", trust_remote_code=True)
images = {call}
for i, image in enumerate(images):
    image.save(f"sample_{{i}}.png")
```'''

