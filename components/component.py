"""The one way bittune declares a KFP component: a lightweight Python component on the
project's own image, its input descriptions (the KFP UI shows them) taken from the parameter
table (:mod:`components.bit.params`) for table parameters and from ``own`` for the rest."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from kfp import dsl

from components.bit import params


def component(image: str, summary: str, own: Mapping[str, str], returns: str = ""):
    """``@component(IMAGE, "What it does.", {"artifact": "description", …})``."""

    def wrap(func: Callable) -> dsl.PythonComponent:
        documented = [
            name
            for name in inspect.signature(func).parameters
            if name in own or name in params.PARAMETERS
        ]
        func.__doc__ = params.describe(summary, documented, own, returns)
        return dsl.component(base_image=image, install_kfp_package=False)(func)

    return wrap
