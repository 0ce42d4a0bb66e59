"""``lightning_trainer(**kwargs)``: Lightning's ``Trainer``, with its refusals of the settings as config errors.

Lightning checks accelerator, devices, strategy and precision when the ``Trainer`` is built and
raises a ``ValueError`` or ``MisconfigurationException`` (``--accelerator foo`` on the command line
would end in a traceback). Both the supervised and the BYOL run build their trainer here, so a bad
``trainer.*`` value reads as every other config error: the keys and values, and Lightning's reason.
"""

from __future__ import annotations

from typing import Any

from backend.errors import ConfigError

#: Trainer arguments that come straight from ``trainer.*`` config keys (named in the error).
_CONFIG_ARGUMENTS: tuple[str, ...] = ("accelerator", "devices", "strategy", "num_nodes", "precision")


def lightning_trainer(**kwargs: Any):
    """``lightning.Trainer(**kwargs)``.

    Raises:
        ConfigError: Lightning refused the settings; the message names the ``trainer.*`` values given.
    """
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (ValueError, MisconfigurationException) as err:
        given = ", ".join(f"trainer.{k}={kwargs[k]!r}" for k in _CONFIG_ARGUMENTS if k in kwargs)
        raise ConfigError(f"Lightning refused the trainer settings ({given}): {err}") from None
