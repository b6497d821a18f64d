"""effprof: profile the efficiency of vision-language and state-space model components."""

__version__ = "0.1.0"

from effprof.registry import BuildContext, Built, Stage, create, get_component, list_components, register_component  # noqa: E402

__all__ = ["BuildContext", "Built", "Stage", "create", "get_component", "list_components", "register_component", "__version__"]
