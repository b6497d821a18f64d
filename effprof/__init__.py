"""effprof: profile the efficiency of vision-language and state-space model components."""

from effprof.core.version import __version__

from effprof.core.registry import BuildContext, Built, Stage, create, get_component, list_components, register_component

__all__ = ["BuildContext", "Built", "Stage", "create", "get_component", "list_components", "register_component", "__version__"]
