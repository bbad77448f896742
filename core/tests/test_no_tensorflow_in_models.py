"""Model, layer and train-step code import no TensorFlow (GPU machines have none)."""

import subprocess
import sys
import textwrap


def test_model_code_and_train_step_import_no_tensorflow():
    code = textwrap.dedent(
        """
        import sys
        import scenic.model_lib.base_models  # every base model, detection included
        import scenic.model_lib.matchers, scenic.model_lib.box_utils
        import scenic.model_lib.layers, scenic.model_lib.model_utils
        import scenic.train_lib.trainer, scenic.train_lib.checkpoints
        import scenic.train_lib.trained_model, scenic.train_lib.classification_trainer
        import scenic.dataset_lib, scenic.common_lib.runner
        import scenic.common_lib.export, scenic.common_lib.export_command
        import scenic_baselines.vit, scenic_baselines.models, scenic_baselines.cli
        tf_names = ("tensorflow", "tensorflow_datasets")
        bad = sorted(m for m in sys.modules if m.split(".")[0] in tf_names)
        print(",".join(bad))
        sys.exit(1 if bad else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"TensorFlow imported: {result.stdout} {result.stderr[-2000:]}"
