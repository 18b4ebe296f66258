"""The environment fingerprint: what it names, and that its id follows what decides the floats."""

from __future__ import annotations

import hashlib

import torch

from fsmis_bench import provenance


def test_fingerprint_names_what_decides_a_runs_floats():
    fingerprint = provenance.environment_fingerprint()
    assert set(provenance.NUMERIC_PACKAGES) == {
        "torch", "diffusers", "transformers", "peft", "monai", "numpy", "scipy", "scikit-image",
    }  # fmt: skip
    assert set(provenance.NUMERIC_PACKAGES) < set(fingerprint)
    assert fingerprint["numpy"] != "absent" and fingerprint["torch"].startswith(
        torch.__version__.split("+")[0]
    )
    assert fingerprint["torch_cuda"] == (torch.version.cuda or "none")
    assert fingerprint["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fingerprint["torch_threads"] == torch.get_num_threads()
    assert fingerprint["cpu_model"] and fingerprint["python"].count(".") == 2
    expected = (
        hashlib.sha256(provenance.CONSTRAINTS.read_bytes()).hexdigest()[:12]
        if provenance.CONSTRAINTS.is_file()
        else "absent"
    )
    assert fingerprint["constraints_sha256"] == expected
    assert provenance.environment("abc")["environment_fingerprint"] == fingerprint


def test_the_id_is_stable_and_changes_with_the_thread_count():
    threads = torch.get_num_threads()
    first = provenance.environment_id(provenance.environment_fingerprint())
    assert len(first) == 12 and provenance.environment_id(provenance.environment_fingerprint()) == first
    try:
        torch.set_num_threads(threads + 1)
        assert provenance.environment_id(provenance.environment_fingerprint()) != first
    finally:
        torch.set_num_threads(threads)
