"""Two processes (`torchrun --standalone --nproc_per_node 2`, gloo on CPU) train like one process on the same global
batch: both ranks take part, the logged losses agree, and exactly one model is saved."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import anndata as ad
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from modeling_scbert.training.workflows import finetune

    hf_logging.set_verbosity_error()
    out, per_device_batch, weighting = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rank = int(os.environ.get("RANK", 0))
    rng = np.random.default_rng(0)
    types = np.array(["B", "T", "NK", "B"] * 8)  # imbalanced: B is twice as common
    means = np.full((len(types), 12), 0.3)
    for k, name in enumerate(["B", "T", "NK"]):
        means[types == name, 4 * k : 4 * k + 4] = 8.0
    cells = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(means).astype(np.float32)),
        obs=pd.DataFrame({"cell_type": pd.Categorical(types)}, index=[f"c{i}" for i in range(len(types))]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(12)]),
    )
    args = TrainingArguments(
        output_dir=str(out / "model"),
        per_device_train_batch_size=per_device_batch,
        max_steps=3,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        train_sampling_strategy="sequential",  # the same data order in both set-ups
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    config = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 8,
              "intermediate_size": 32, "num_random_features": 8, "classifier_hidden_sizes": [16],
              "initializer_range": 0.1, "feature_redraw_interval": 2,  # a redraw mid-run, on both ranks alike
              # No dropout (a new model's head has 0.3): its masks differ between one and two processes.
              "classifier_input_dropout": 0.0}
    trainer = finetune(cells, training_args=args, label_key="cell_type", preset="full", class_weighting=weighting,
                       config_overrides=config, encode_kwargs={"cache_dir": str(out / f"cache-{rank}")})
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    marker = {"rank": rank, "world_size": args.world_size, "losses": losses, "step": trainer.state.global_step}
    (out / f"rank{rank}.json").write_text(json.dumps(marker))
    """
)


def _run(command, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["none", "balanced"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, weighting):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)

    _run([sys.executable, str(script), str(tmp_path / "single"), "8", weighting], root)
    _run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "ddp"), "4", weighting], root)

    single = json.loads((tmp_path / "single" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]  # both ranks took part, in one run of two processes
    assert [r["step"] for r in ranks] == [3, 3]
    assert len(single["losses"]) == 3
    for rank in ranks:
        # The logged loss is averaged over processes: it equals the single-process loss on the same 8 cells, step
        # after step (gradients were averaged correctly, including across a random-feature redraw).
        assert rank["losses"] == pytest.approx(single["losses"], rel=1e-4, abs=1e-5)
    saved = sorted(p.relative_to(tmp_path / "ddp") for p in (tmp_path / "ddp").rglob("model.safetensors"))
    assert saved == [Path("model/model.safetensors")]  # exactly one model, written by rank 0
    assert (tmp_path / "ddp" / "model" / "genes.txt").is_file()
