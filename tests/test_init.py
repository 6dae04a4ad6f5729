"""``import rwwce`` stays light: optional dependencies load only when their feature is used."""

import subprocess
import sys

HEAVY = ["transformers", "accelerate", "lightning", "pytorch_lightning", "sklearn", "matplotlib"]


def test_import_rwwce_does_not_import_optional_dependencies():
    code = (
        "import sys, rwwce, rwwce.monitor, rwwce.integrations; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_public_names_exist():
    import rwwce

    for name in rwwce.__all__:
        assert hasattr(rwwce, name), name
    assert callable(rwwce.loss_breakdown) and callable(rwwce.adjust_class_weights)


def test_integrations_load_on_first_access():
    code = (
        "import sys, rwwce; assert 'transformers' not in sys.modules; "
        "trainer = rwwce.integrations.huggingface.RWWCETrainer; "
        "print('transformers' in sys.modules, trainer.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "No module named 'transformers'" in out.stderr:
        return  # the hf extra is not installed: nothing to load
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "RWWCETrainer"]
