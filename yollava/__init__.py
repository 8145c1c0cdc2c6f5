"""yollava: personalize a frozen LLaVA-1.5 with a learned soft prompt (Yo'LLaVA)."""

from yollava.errors import YollavaError

__version__ = "0.1.0"

__all__ = ["YollavaError", "__version__"]
