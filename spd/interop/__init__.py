"""Everything about runs made by the reference implementation; nothing else in spd/ knows the reference's names."""


def user_errors() -> tuple[type[Exception], ...]:
    """What importing or training a reference run raises for input the user can fix (a CLI exits 2 on these).

    A function, so that importing spd.interop loads neither torch nor transformers."""
    from spd.interop.paths import ReferencePathError
    from spd.interop.reference_config import ReferenceConfigError
    from spd.interop.source import ReferenceImportError
    from spd.interop.state_dict import StateDictMismatch
    from spd.lm.hf import HFExtraMissingError, HFResourceMissingError
    from spd.targets.pretrain_names import UnsupportedReferenceModelError

    return (
        ReferenceConfigError, ReferencePathError, ReferenceImportError, StateDictMismatch,
        UnsupportedReferenceModelError, HFResourceMissingError, HFExtraMissingError,
    )  # fmt: skip
