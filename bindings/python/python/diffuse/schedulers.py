"""diffusers' scheduler classes by name, each a configuration the engine builds per generation.

Every class the engine implements is here under its diffusers name (``DPMSolverMultistepScheduler``,
``EulerAncestralDiscreteScheduler``, ...), with ``from_config``, ``from_pretrained`` and ``.config`` as in diffusers.
The stepping itself runs inside the engine; these objects carry the configuration.
"""

import json
import os

from . import _native

__all__ = ["FrozenDict", "SchedulerMixin"]


class FrozenDict(dict):
    """A read-only dict whose keys are also attributes, as diffusers' ``scheduler.config``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the scheduler config has no key {name!r}") from None

    def _refuse(self, *args, **kwargs):
        raise TypeError("a scheduler config is read-only: use from_config(config, key=value) for a changed one")

    __setitem__ = __delitem__ = __setattr__ = _refuse
    pop = popitem = setdefault = update = clear = _refuse


class SchedulerMixin:
    """A diffusers scheduler configuration. Build one with ``from_config`` or ``from_pretrained``."""

    def __init__(self, **config):
        values = {key: value for key, value in config.items() if not key.startswith("_")}
        values["_class_name"] = type(self).__name__
        _native.check_scheduler_config(json.dumps(values))
        use_default_values = list(config.get("_use_default_values", []))
        if use_default_values:
            values["_use_default_values"] = use_default_values
        self._config = FrozenDict(values)

    @property
    def config(self):
        """The configuration, as diffusers' ``scheduler.config`` (``_use_default_values`` lists the keys the
        pipeline filled in, which ``from_config`` leaves to the new class's defaults)."""
        return self._config

    @classmethod
    def from_config(cls, config, **kwargs):
        """A scheduler of this class from another's ``config`` (a dict), with ``kwargs`` overriding keys, as
        diffusers' ``from_config``: keys the source only had by default take this class's defaults."""
        if isinstance(config, SchedulerMixin):
            config = config.config
        if not isinstance(config, dict):
            raise TypeError(f"from_config takes a scheduler config dict, not {type(config).__name__}")
        defaults = set(config.get("_use_default_values", []))
        values = {k: v for k, v in config.items() if k not in defaults and not k.startswith("_")}
        values.update(kwargs)
        return cls(**values)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        """A scheduler of this class from a folder's ``scheduler_config.json`` (``subfolder="scheduler"`` for a
        pipeline folder)."""
        folder = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        path = os.path.join(folder, "scheduler_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no scheduler_config.json (give a local folder)")
        values = json.loads(_native.read_scheduler_config(path))
        values.update(kwargs)
        return cls(**{k: v for k, v in values.items() if k != "_class_name"})

    def _engine_config(self):
        """The configuration as the engine reads it (JSON)."""
        return json.dumps({k: v for k, v in self._config.items() if k != "_use_default_values"})

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(dict(self._config), indent=2, sort_keys=True)}"


SCHEDULER_CLASSES = {name: type(name, (SchedulerMixin,), {"__module__": __name__}) for name in _native.scheduler_classes()}
globals().update(SCHEDULER_CLASSES)
__all__ += sorted(SCHEDULER_CLASSES)


def scheduler_from_engine(config_json, filled_keys):
    """The pipeline's own scheduler: its class, its configuration as the pipeline left it."""
    values = json.loads(config_json)
    klass = SCHEDULER_CLASSES.get(values.get("_class_name"))
    if klass is None:
        raise ValueError(f"the folder's scheduler class {values.get('_class_name')!r} is not implemented")
    values = {k: v for k, v in values.items() if k != "_class_name"}
    if filled_keys:
        values["_use_default_values"] = list(filled_keys)
    return klass(**values)
