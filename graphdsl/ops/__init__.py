"""Op definitions: each module registers its ops and defines their constructors."""
from . import (  # noqa: F401  (registration side effects)
    conv,
    conv_variants,
    core,
    dropouts,
    nn,
    pool,
    recurrent,
    resize,
    special,
    tensor,
    transformer,
)
