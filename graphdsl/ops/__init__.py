"""Op definitions: each module registers its ops and defines their constructors."""
from . import conv, core, nn, pool, tensor, transformer  # noqa: F401  (registration side effects)
