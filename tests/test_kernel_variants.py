"""tools/kernel_variants.py: the variants make test reruns, and the tests they rerun."""

import pytest

from tools import kernel_variants

from .conftest import run_script


def test_the_ci_variants_differ_from_the_host_and_from_each_other():
    assert len(kernel_variants.CI) >= 2 and set(kernel_variants.CI) <= set(kernel_variants.VARIANTS)
    settings = [tuple(sorted(kernel_variants.VARIANTS[n].items())) for n in kernel_variants.CI]
    assert len(set(settings)) == len(settings) and all(settings)


def test_an_unknown_variant_is_named_with_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        kernel_variants.main(["--variants", "avx9"])
    assert stop.value.code == 2 and "avx9" in capsys.readouterr().err


def test_the_cross_batch_and_cross_path_tests_are_marked():
    proc = run_script("-m", "pytest", "--collect-only", "-q", "-m", "kernels", "tests")
    marked = [line for line in proc.stdout.splitlines() if "::" in line]
    for name in ("test_the_posterior_change_is_the_label_difference",
                 "test_images_do_not_depend_on_batch_size",
                 "test_two_clients_at_once_each_get_their_own_images",
                 "test_save_load_roundtrip_gives_identical_features"):
        assert any(name in line for line in marked), name
