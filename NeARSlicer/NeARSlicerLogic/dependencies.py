"""Python packages the NeAR engine needs inside Slicer, installed on first use after asking.

* torch comes through the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build when an
  NVIDIA GPU is present); without that extension, ``pip install torch`` is the fallback.
* scipy, scikit-image, safetensors, matplotlib, pynrrd and tqdm come with ``slicer.util.pip_install``.
* numpy, SimpleITK and vtk ship with Slicer and are never installed or upgraded: a constraints
  file pins them to the versions already there, so no dependency can pull a new copy in.

Nothing here imports Qt; dialogs are the caller's ``confirm`` callable (the widget passes
``slicer.util.confirmOkCancelDisplay``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile

MINIMUM_TORCH_VERSION = "2.1"

# (import name, pip requirement) of every package the engine imports that Slicer does not ship.
REQUIREMENTS = (
    ("scipy", "scipy>=1.10"),
    ("skimage", "scikit-image>=0.21"),
    ("safetensors", "safetensors>=0.4"),
    ("matplotlib", "matplotlib>=3.6"),
    ("nrrd", "pynrrd>=1.0"),
    ("tqdm", "tqdm>=4.60"),
)

# Distributions that come with Slicer: pinned, never installed by this extension.
PROVIDED_BY_SLICER = (("numpy", "numpy"), ("SimpleITK", "SimpleITK"), ("vtk", "vtk"))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def torchInstalled() -> bool:
    return _importable("torch")


def missingRequirements() -> list:
    """pip requirement strings of the missing packages (torch first when it is missing)."""
    missing = [] if torchInstalled() else [f"torch>={MINIMUM_TORCH_VERSION}"]
    missing += [requirement for module, requirement in REQUIREMENTS if not _importable(module)]
    return missing


def dependenciesInstalled() -> bool:
    return not missingRequirements()


def constraintsText() -> str:
    """pip constraints that keep Slicer's own numpy, SimpleITK and vtk exactly as they are."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for distribution, _module in PROVIDED_BY_SLICER:
        try:
            lines.append(f"{distribution}=={version(distribution)}")
        except PackageNotFoundError:
            continue  # built into Slicer without pip metadata: pip does not see it either way
    return "\n".join(lines) + "\n"


def _installTorch(pipInstall):
    """torch via PyTorchUtils (CUDA build when an NVIDIA GPU is present), else plain pip."""
    try:
        import PyTorchUtils  # the PyTorch extension, a dependency of this extension
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            # The user already agreed in our own dialog: do not ask a second time.
            torch = torchLogic.installTorch(askConfirmation=False,
                                            torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
            if torch is None:
                raise RuntimeError("PyTorch could not be installed by the PyTorch extension")
        return
    logging.warning("PyTorch extension (PyTorchUtils) not found: installing torch with pip")
    pipInstall(f"torch>={MINIMUM_TORCH_VERSION}")


def installDependencies(confirm=None, pipInstall=None) -> bool:
    """Install whatever is missing, after ``confirm(message) -> bool`` agrees.

    Returns True when everything is (now) importable, False when the user declined.
    ``pipInstall`` defaults to ``slicer.util.pip_install``.
    """
    missing = missingRequirements()
    if not missing:
        return True
    message = (
        "NeAR refinement needs these Python packages, which are not installed yet:\n\n  "
        + "\n  ".join(missing)
        + "\n\nInstall them now? This downloads several hundred MB the first time (PyTorch) and may take"
        " a few minutes. Slicer's own numpy, SimpleITK and VTK are kept as they are."
    )
    if confirm is not None and not confirm(message):
        return False
    if pipInstall is None:
        import slicer

        pipInstall = slicer.util.pip_install

    if any(requirement.startswith("torch") for requirement in missing):
        _installTorch(pipInstall)
    others = [requirement for requirement in missing if not requirement.startswith("torch")]
    if others:
        handle, constraintsPath = tempfile.mkstemp(prefix="nearslicer-constraints-", suffix=".txt")
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(constraintsText())
            pipInstall(others + ["-c", constraintsPath])
        finally:
            os.remove(constraintsPath)
    importlib.invalidate_caches()
    still = missingRequirements()
    if still:
        raise RuntimeError("these packages are still missing after installation: " + ", ".join(still))
    return True
