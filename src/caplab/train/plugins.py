"""What a trainer is given besides its optimizer: modular adaptive training and diagnostics, from their own
config sections (`mat:`, `diagnostics:`), attached as plug-ins.

A plug-in has a `name` and `record() -> dict` (merged into each evaluation's
record); it may add trainer callbacks, and keep state in checkpoints with
`state_dict()` / `load_state_dict(state)` (saved as the checkpoint's meta[name]).
"""

from __future__ import annotations

from dataclasses import dataclass

from caplab.train.mat import MATConfig, ModularAdaptiveTraining

__all__ = ["DiagnosticsConfig", "MATConfig", "attach_plugins", "LEGACY_TRAIN_KEYS"]


@dataclass
class DiagnosticsConfig:
    """The `diagnostics:` section: what to measure during training (0: off)."""

    spectral_every: int = 0  # gradient spike energy share and subspace overlap every N steps (caplab.analysis.spectral)
    signal_every: int = 0  # activation variance, cosine similarity, stable rank, gradient norms by block (image models)

    def __post_init__(self) -> None:
        if self.spectral_every < 0 or self.signal_every < 0:
            raise ValueError("diagnostics.spectral_every and diagnostics.signal_every must be non-negative")


# keys of `train:` before MAT and the diagnostics had sections of their own -> (section, key)
LEGACY_TRAIN_KEYS = {
    "mat_every": ("mat", "every"), "mat_rule": ("mat", "rule"), "mat_alpha": ("mat", "alpha"),
    "mat_probe": ("mat", "probe"), "mat_kernel": ("mat", "kernel"), "mat_lambda": ("mat", "lambda_scale"),
    "mat_frozen": ("mat", "frozen"), "mat_share": ("mat", "share"), "mat_probe_source": ("mat", "probe_source"),
    "spectral_diagnostics_every": ("diagnostics", "spectral_every"),
}


def attach_plugins(trainer, mat: MATConfig, diagnostics: DiagnosticsConfig) -> None:
    """Give `trainer` the plug-ins its config asks for."""
    if diagnostics.spectral_every > 0:
        from caplab.analysis.spectral import SpectralDiagnostics

        spectral = SpectralDiagnostics(diagnostics.spectral_every)
        trainer.add_callback("on_step_end", spectral)
        trainer.add_plugin(spectral)
    if diagnostics.signal_every > 0:
        from caplab.analysis.normalization import SignalPropagationCallback

        signal = SignalPropagationCallback(diagnostics.signal_every, seed=trainer.cfg.seed)
        trainer.add_callback("on_step_end", signal)
        trainer.add_plugin(signal)
    if mat.every > 0:
        ModularAdaptiveTraining(trainer, mat)  # registers its callbacks and itself
